"""Python client for an edgecam server; hides the protobuf types."""
