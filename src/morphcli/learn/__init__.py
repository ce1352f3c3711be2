"""Learn on a graph: the training wrapper (ONNX -> torch module, weights back), the MorphNet
penalty, the task loss, the penalty's strength, the training loop, data sources, checkpoints
and progress."""
