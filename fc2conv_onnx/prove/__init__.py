"""Proving a conversion in onnxruntime: at the training size, window by window, and the in-graph detector."""
