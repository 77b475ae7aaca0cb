"""Per-framework helpers the passes call (ONNX today; a torch backend sits beside it when needed)."""
