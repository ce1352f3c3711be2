"""Resource targets as users write them on the command line: amounts (``parse_target``) and
latencies (``parse_latency_target``)."""

from __future__ import annotations

from dataclasses import dataclass

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


_TIME_UNITS = {"ms": 1.0, "us": 1e-3, "s": 1e3}


@dataclass(frozen=True)
class LatencyTarget:
    """A latency target: a fraction of the input model's latency, or an absolute time."""

    text: str
    fraction: float | None = None
    ms: float | None = None

    def of(self, reference_ms: float) -> float:
        """The target in ms, for an input model that takes ``reference_ms``."""
        return self.fraction * reference_ms if self.fraction is not None else float(self.ms)

    def __str__(self) -> str:
        return self.text


def parse_latency_target(text: str, flag: str = "--target-latency") -> LatencyTarget:
    """``50%`` (of the input model's measured latency), or a time: ``3ms``, ``800us``,
    ``0.2s``. Zero, negative, unitless or malformed values are a MorphError."""
    raw = text.strip().lower()
    unit = next((u for u in ("ms", "us", "s") if raw.endswith(u)), None)
    try:
        if raw.endswith("%"):
            value = float(raw[:-1]) / 100.0
        elif unit is not None:
            value = float(raw[: -len(unit)]) * _TIME_UNITS[unit]
        else:
            raise ValueError
    except ValueError:
        raise MorphError(
            f"bad {flag} {text!r}: expected a share of the input's latency (50%) or a time "
            "(3ms, 800us, 0.2s)"
        ) from None
    if not np.isfinite(value) or value <= 0:
        raise MorphError(f"bad {flag} {text!r}: must be positive")
    if raw.endswith("%"):
        return LatencyTarget(text, fraction=value)
    return LatencyTarget(text, ms=value)
