"""morphcli: slim trained ONNX networks to a resource budget with MorphNet."""

__version__ = "0.1.0"
