"""What a model is on disk and in memory: reading it, its weights where they lie, writing it with one
commit point, the registry of ONNX ops, tensor layouts and names."""
