"""The camera server. Importing it pulls in no onnx, torch or TVM compiler."""
