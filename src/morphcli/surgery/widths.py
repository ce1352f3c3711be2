"""Width choices: copy counts that give each group a chosen width, rounded widths, a uniform
multiplier and the searches that fit a multiplier or a ratio to a resource target.

A multiplier W gives each removable group ``round(W * width)`` channels, rounded to a
multiple of ``round_to``; pinned groups keep theirs. Above 1 channels are replicated (the
most important first when W * width is not a multiple of the width), below 1 the most
important are kept. For a resource target, W is the largest multiplier whose rounded widths
fit it: a bisection over the resource, not over surgery runs, then a scan up to twice that
W for a measured resource's steps down.
"""

from __future__ import annotations

import numpy as np

from morphcli.errors import EXIT_BUDGET, MorphError
from morphcli.graph.channels import ChannelGraph
from morphcli.resources.resource import Resource

# The search stops widening here: a model 1000x wider than the input is not a sane target.
MAX_MULTIPLIER = 1000.0
BISECTION_STEPS = 60
SCAN_POINTS = 200
# No layer is this wide; a multiplier that asks for it is refused before any arithmetic.
MAX_WIDTH = 2**31


def copies_for_width(importance: np.ndarray, width: int) -> np.ndarray:
    """Copy counts giving ``width`` channels: keep the ``width`` most important classes when
    shrinking; when widening, every class gets ``width // n`` copies and the
    ``width % n`` most important one more. Ties keep the earlier class."""
    n = len(importance)
    order = np.argsort(-np.asarray(importance), kind="stable")
    copies = np.zeros(n, dtype=np.int64)
    if width <= n:
        copies[order[:width]] = 1
    else:
        copies[:] = width // n
        copies[order[: width % n]] += 1
    return copies


def rounded_width(scaled: float, full: int, round_to: int = 1) -> int:
    """A group's width for a real-valued ``scaled`` width: rounded half up, at least 1, a
    multiple of ``round_to`` (at least ``round_to``); a shrink never exceeds ``full``, which
    is kept when no smaller multiple exists."""
    width = max(1, int(np.floor(scaled + 0.5)))
    if round_to > 1:
        width = max(round_to, round_to * int(np.floor(width / round_to + 0.5)))
    if scaled <= full:
        width = min(width, full)
    return width


def copies_for_widths(
    cg: ChannelGraph, importance: list[np.ndarray], widths: np.ndarray
) -> list[np.ndarray]:
    """Per group, the copy counts for its target width (pinned groups keep every class once)."""
    return [
        copies_for_width(score, int(width)) if group.prunable else np.ones(group.width, np.int64)
        for group, score, width in zip(cg.groups, importance, widths, strict=True)
    ]


def ratio_widths(cg: ChannelGraph, ratio: float, round_to: int = 1) -> np.ndarray:
    """Every removable group keeps ``round(ratio * width)`` channels (at least 1), rounded to
    a multiple of ``round_to``; pinned groups keep their width."""
    if not 0 < ratio <= 1:
        raise MorphError(f"bad --ratio {ratio}: must be in (0, 1]")
    return np.array(
        [
            rounded_width(ratio * g.width, g.width, round_to) if g.prunable else g.width
            for g in cg.groups
        ],
        dtype=np.int64,
    )


def multiplier_widths(cg: ChannelGraph, multiplier: float, round_to: int = 1) -> np.ndarray:
    """Every removable group's width times ``multiplier``, rounded; pinned groups unchanged."""
    if not 0 < multiplier < np.inf:
        raise MorphError(f"bad --multiplier {multiplier}: must be a positive number")
    widest = max((g.width for g in cg.groups if g.prunable), default=0)
    if multiplier * widest >= MAX_WIDTH:
        raise MorphError(
            f"--multiplier {multiplier:g} would make layers of {multiplier * widest:.3g} channels"
        )
    return np.array(
        [
            rounded_width(multiplier * g.width, g.width, round_to) if g.prunable else g.width
            for g in cg.groups
        ],
        dtype=np.int64,
    )


def target_multiplier(
    resource: Resource, cg: ChannelGraph, target: float, round_to: int = 1
) -> float:
    """The largest multiplier whose rounded widths cost at most ``target`` of ``resource``.

    Raises:
        MorphError: exit code 1 when the narrowest widths already cost more than the target,
            or when even ``MAX_MULTIPLIER`` stays under it (no removable group).
    """

    kind = resource.name

    def cost(w: float) -> float:
        return resource.value(multiplier_widths(cg, w, round_to).astype(np.float64))

    low = 1e-9  # every removable group at its narrowest
    if cost(low) > target:
        raise MorphError(
            f"the target {kind} {target:.4g} is unreachable: the smallest reachable is "
            f"{cost(low):.4g} (every removable group at its narrowest)",
            exit_code=EXIT_BUDGET,
        )
    high = 1.0
    while cost(high) <= target:
        if high >= MAX_MULTIPLIER:
            raise MorphError(
                f"the target {kind} {target:.4g} is unreachable: {MAX_MULTIPLIER:g}x widths "
                f"cost only {cost(high):.4g} (few or no removable groups)",
                exit_code=EXIT_BUDGET,
            )
        low, high = high, high * 2
    for _ in range(BISECTION_STEPS):
        mid = (low + high) / 2
        if cost(mid) <= target:
            low = mid
        else:
            high = mid
    # A measured resource is a staircase that can step down as widths grow (a width that
    # fits a kernel's blocks runs faster than one under it): look past the bisection's end.
    fits = [w for w in np.linspace(low, 2 * low, SCAN_POINTS) if cost(w) <= target]
    return max(fits, default=low)


def top_up(
    resource: Resource,
    cg: ChannelGraph,
    widths: np.ndarray,
    share: np.ndarray,
    target: float,
    step: int,
    low: float,
) -> np.ndarray:
    """Widen removable groups by ``step`` channels, the one furthest under its ``share``
    first, while the cost is under ``low * target`` and the next step still fits.

    The uniform multiplier's rounding leaves the cost in steps; this closes the gap to the
    band without leaving the uniform shape by more than one step per group.
    """
    widths = widths.copy()
    prunable = cg.prunable_mask()
    while resource.value(widths) < low * target:
        ratio = np.where(prunable, widths / np.maximum(share, 1e-9), np.inf)
        for gid in np.argsort(ratio, kind="stable")[: int(prunable.sum())]:
            trial = widths.copy()
            trial[gid] += step
            if resource.value(trial) <= target:
                widths = trial
                break
        else:
            break
    return widths
