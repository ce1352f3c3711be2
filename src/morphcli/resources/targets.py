"""Resource targets as users write them on the command line."""

from __future__ import annotations

import numpy as np

from morphcli.errors import MorphError

_SUFFIXES = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_target(text: str, reference: float, flag: str = "target") -> float:
    """A resource amount as users write it: ``50%`` (of ``reference``), ``1.2G``, ``300M``,
    ``45k`` or a plain number. Zero, negative or malformed values are a MorphError."""
    raw = text.strip()
    try:
        if raw.endswith("%"):
            value = float(raw[:-1]) / 100.0 * reference
        elif raw and raw[-1].lower() in _SUFFIXES:
            value = float(raw[:-1]) * _SUFFIXES[raw[-1].lower()]
        else:
            value = float(raw)
    except ValueError:
        raise MorphError(
            f"bad {flag} {text!r}: expected e.g. 50%, 1.2G, 300M, 45k or a plain number"
        ) from None
    if not np.isfinite(value) or value <= 0:
        raise MorphError(f"bad {flag} {text!r}: must be positive")
    return value
