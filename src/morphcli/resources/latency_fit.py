"""Fitting one unit's latency to its measured times: a piecewise-linear model in its work.

A unit's latency at width configuration k is modelled from its FLOPs ``F`` and the elements
its kernels read and write ``B`` (both functions of the alive channels):

    t = c0 + (1 - own_a) * (c1 * F_s + c2 * B_s) + own_a * (c3 * F + c4 * B) + near_a * c5 * B

``F_s``, ``B_s`` count every channel axis rounded up to a multiple of ``s`` (a blocked
kernel pads channels: the cost steps at multiples of s). ``own_a`` is 1 when a channel
count of the unit is not a multiple of ``a``: the runtime runs another kernel then, one
that scales with the exact counts (with ``a`` = 1 there is one regime, own_a = 0).
``near_a`` is 1 when a neighbouring node's count is not (the runtime converts the layout
between them, which the unit pays for its tensors). All c >= 0 (non-negative least
squares, relative errors). ``s``, ``a`` and which work the blocked regime counts are chosen
per unit by leave-one-out error: the simplest candidate within ``SIMPLER_BY`` of the best,
so noise does not buy steps that are not there.
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


N_COEF = 6


@dataclass(frozen=True)
class Features:
    """A unit's features at every configuration: ``padded[s]`` = (F_s, B_s) columns, ``exact``
    = (F, B), ``own[a]`` and ``near[a]`` = the 0/1 misalignments per configuration."""

    padded: dict[int, np.ndarray]  # s -> [configs, 2]
    exact: np.ndarray  # [configs, 2]
    own: dict[int, np.ndarray]  # a -> [configs]
    near: dict[int, np.ndarray]  # a -> [configs]


@dataclass(frozen=True)
class UnitFit:
    """The chosen pair and coefficients [c0 .. c5] (ms, ms per FLOP, ms per element)."""

    step: int
    align: int
    coef: tuple[float, ...]
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


def _design(features: Features, step: int, align: int, work: tuple[int, ...]) -> np.ndarray:
    """Columns for [c0 .. c5]; those the candidate leaves out are zero."""
    n = len(features.exact)
    own = features.own[align] if align > 1 else np.zeros(n)
    padded = features.padded[step] * (1.0 - own)[:, None]
    columns = [np.ones(n), *(padded[:, k] if k in work else np.zeros(n) for k in (0, 1))]
    if align > 1:
        f, b = features.exact.T
        columns += [own * f, own * b, features.near[align] * b]
    else:
        columns += [np.zeros(n)] * 3
    return np.stack(columns, axis=1)


def _weighted(design: np.ndarray, times: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising sum((weight * (design @ c - times))^2)."""
    scaled = design * weight[:, None]
    norms = np.linalg.norm(scaled, axis=0)
    usable = norms > 0
    coef = np.zeros(design.shape[1])
    coef[usable] = nnls(scaled[:, usable] / norms[usable], times * weight) / norms[usable]
    return coef


def _fit(design: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative coefficients for relative errors, and the leave-one-out RMS of the
    relative error (against the measured time) on the columns the fit uses.

    Relative errors weigh each configuration by 1 / its time; by the measured time, a run
    that came out fast by chance would weigh more and pull the fit low, so the fit's weights
    are 1 / the time an unweighted fit predicts (one reweighting step). The score divides by
    the measured time, so a candidate that overshoots small times is not let off."""
    floor = TIME_FLOOR * times.max()
    first = _weighted(design, times, np.ones(len(times)))
    weight = 1.0 / np.maximum(design @ first, floor)
    coef = _weighted(design, times, weight)
    residual = (design @ coef - times) / np.maximum(times, floor)
    used = design[:, coef > 0] * weight[:, None]
    if used.shape[1]:
        leverage = np.sum(used * (np.linalg.pinv(used).T), axis=1)
        residual = residual / np.maximum(1.0 - leverage, MIN_LEVERAGE_GAP)
    return coef, float(np.sqrt(np.mean(residual**2)))


# Which work the steady part counts: FLOPs, elements, or both.
WORK = ((0,), (1,), (0, 1))


def fit_unit(features: Features, times: np.ndarray) -> UnitFit:
    """The simplest candidate whose leave-one-out error is within SIMPLER_BY of the best, and
    its coefficients. Candidates are every (step, align) with the steady part in FLOPs,
    elements or both; simpler means fewer columns, then fewer of step and align. Measured on
    a few configurations, several candidates often fit equally well, and the simplest one
    predicts new widths best. A unit that never took time gets all-zero coefficients."""
    times = np.asarray(times, dtype=np.float64)
    if not np.any(times > 0):
        return UnitFit(1, 1, (0.0,) * N_COEF, 0.0)
    candidates = []
    for step in STEPS:
        for align in STEPS:
            for work in WORK:
                coef, error = _fit(_design(features, step, align, work), times)
                columns = 1 + len(work) + (3 if align > 1 else 0)
                simple = (columns, (step > 1) + (align > 1))
                candidates.append((simple, step, align, coef, error))
    candidates.sort(key=lambda c: c[0])
    best = min(c[4] for c in candidates)
    _, step, align, coef, error = next(c for c in candidates if c[4] <= SIMPLER_BY * best + 1e-12)
    return UnitFit(step, align, tuple(float(c) for c in coef), error)
