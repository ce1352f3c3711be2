"""How numbers read in every summary."""

from __future__ import annotations


def human(value: float) -> str:
    """1234567 -> '1.23M' (k, M, G, T)."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"
