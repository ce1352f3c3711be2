"""morphcli: slim trained ONNX networks to a resource budget with MorphNet.

The Python API (``OnnxModule``, ``MorphNetPenalty``) needs torch; it is imported on first
use, so ``import morphcli`` and ``morphnet analyze`` stay fast without it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {"MorphNetPenalty": "morphcli.learn.penalty", "OnnxModule": "morphcli.learn.wrapper"}
__all__ = ["MorphNetPenalty", "OnnxModule", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'morphcli' has no attribute {name!r}")
