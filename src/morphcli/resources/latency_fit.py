"""Fitting one unit's latency to its measured times: a piecewise-linear model in its work.

A unit's latency at width configuration k is modelled from its FLOPs ``F`` and the elements
its kernels read and write ``B`` (both functions of the alive channels):

    t = c0 + c1 * F_s + c2 * B_s + misaligned_a * (c3 * F + c4 * B)

``F_s``, ``B_s`` count every channel axis rounded up to a multiple of ``s`` (a blocked
kernel pads channels: the cost steps at multiples of s), and ``misaligned_a`` is 1 when a
channel count of the unit is not a multiple of ``a`` (the runtime falls back to a slower
kernel). All c >= 0 (non-negative least squares, relative errors). ``s`` and ``a`` are
chosen per unit from ``STEPS`` by leave-one-out error: the simplest pair within
``SIMPLER_BY`` of the best, so noise does not buy steps that are not there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STEPS = (1, 4, 8, 16)
SIMPLER_BY = 1.05
# Relative errors are taken against at least this fraction of the unit's largest time, so
# a configuration where the unit takes next to nothing does not dominate its fit.
TIME_FLOOR = 0.02
MIN_LEVERAGE_GAP = 0.02


@dataclass(frozen=True)
class Features:
    """A unit's features at every configuration: ``padded[s]`` = (F_s, B_s) columns, ``exact``
    = (F, B), ``misaligned[a]`` = 0/1 per configuration."""

    padded: dict[int, np.ndarray]  # s -> [configs, 2]
    exact: np.ndarray  # [configs, 2]
    misaligned: dict[int, np.ndarray]  # a -> [configs]


@dataclass(frozen=True)
class UnitFit:
    """The chosen pair and coefficients [c0 .. c4] (ms, ms per FLOP, ms per element)."""

    step: int
    align: int
    coef: tuple[float, float, float, float, float]
    loo_error: float


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """min ||a x - b|| subject to x >= 0 (Lawson and Hanson's active set method)."""
    n = a.shape[1]
    x = np.zeros(n)
    active = np.zeros(n, dtype=bool)
    tol = 1e-12 * max(1.0, float(np.abs(a).max(initial=0.0)) * float(np.abs(b).max(initial=0.0)))
    for _ in range(max_iter):
        w = a.T @ (b - a @ x)
        if active.all() or w[~active].max(initial=-np.inf) <= tol:
            break
        active[np.argmax(np.where(active, -np.inf, w))] = True
        while True:
            z = np.zeros(n)
            z[active] = np.linalg.lstsq(a[:, active], b, rcond=None)[0]
            if (z[active] > 0).all():
                x = z
                break
            down = active & (z <= 0)
            alpha = np.min(x[down] / np.maximum(x[down] - z[down], 1e-300))
            x = x + alpha * (z - x)
            active &= x > tol
            if not active.any():
                break
    return x


def _design(features: Features, step: int, align: int) -> np.ndarray:
    columns = [np.ones(len(features.exact)), *features.padded[step].T]
    if align > 1:
        m = features.misaligned[align]
        columns += [m * features.exact[:, 0], m * features.exact[:, 1]]
    return np.stack(columns, axis=1)


def _fit(design: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative coefficients (relative least squares) and the leave-one-out RMS of the
    relative error on the columns the fit uses."""
    weight = 1.0 / np.maximum(times, TIME_FLOOR * times.max())
    scaled = design * weight[:, None]
    norms = np.linalg.norm(scaled, axis=0)
    usable = norms > 0
    coef = np.zeros(design.shape[1])
    target = times * weight
    coef[usable] = nnls(scaled[:, usable] / norms[usable], target) / norms[usable]
    residual = scaled @ coef - target
    used = scaled[:, coef > 0]
    if used.shape[1]:
        leverage = np.sum(used * (np.linalg.pinv(used).T), axis=1)
        residual = residual / np.maximum(1.0 - leverage, MIN_LEVERAGE_GAP)
    return coef, float(np.sqrt(np.mean(residual**2)))


def fit_unit(features: Features, times: np.ndarray) -> UnitFit:
    """The simplest (step, align) whose leave-one-out error is within SIMPLER_BY of the best,
    and its coefficients. A unit that never took time gets all-zero coefficients."""
    times = np.asarray(times, dtype=np.float64)
    if not np.any(times > 0):
        return UnitFit(1, 1, (0.0, 0.0, 0.0, 0.0, 0.0), 0.0)
    candidates = []
    for step in STEPS:
        for align in STEPS:
            coef, error = _fit(_design(features, step, align), times)
            full = np.zeros(5)
            full[: len(coef)] = coef
            candidates.append((step, align, full, error))
    # simplest first: no steps at all, then the coarser structure costs more
    candidates.sort(key=lambda c: (c[0] > 1) + (c[1] > 1))
    best = min(c[3] for c in candidates)
    step, align, coef, error = next(c for c in candidates if c[3] <= SIMPLER_BY * best + 1e-12)
    return UnitFit(step, align, tuple(float(c) for c in coef), error)
