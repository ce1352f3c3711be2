"""Read and analyse a graph: load and validate a model, its shapes, onnxruntime sessions, and
the channel-dependency graph (slots, union-find, groups, pinning)."""
