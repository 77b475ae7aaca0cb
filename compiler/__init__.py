"""The offline compiler: ONNX in, a verified TVM artifact out. Heavy imports stay inside functions."""
