"""Expand: one width multiplier for every removable group (MorphNet's uniform expansion).

A multiplier W gives each removable group ``round(W * width)`` channels, rounded to a
multiple of ``round_to``; pinned groups keep theirs. Above 1 channels are replicated (the
most important first when W * width is not a multiple of the width), below 1 the most
important are kept. For a resource target, W is the largest multiplier whose rounded widths
fit it: a bisection over the cost model, not over surgery runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from morphcli.channels import ChannelGraph, build_channel_graph
from morphcli.cost import CostModel, build_cost_model, parse_target
from morphcli.errors import EXIT_BUDGET, MorphError
from morphcli.importance import class_importance, copies_for_widths, rounded_width
from morphcli.model import load_model
from morphcli.resize import check_output_path, resize
from morphcli.surgery import PRESERVE, Init

# The search stops widening here: a model 1000x wider than the input is not a sane target.
MAX_MULTIPLIER = 1000.0
BISECTION_STEPS = 60


def multiplier_widths(cg: ChannelGraph, multiplier: float, round_to: int = 1) -> np.ndarray:
    """Every removable group's width times ``multiplier``, rounded; pinned groups unchanged."""
    if not multiplier > 0:
        raise MorphError(f"bad --multiplier {multiplier}: must be positive")
    return np.array(
        [
            rounded_width(multiplier * g.width, g.width, round_to) if g.prunable else g.width
            for g in cg.groups
        ],
        dtype=np.int64,
    )


def target_multiplier(
    cm: CostModel, cg: ChannelGraph, kind: str, target: float, round_to: int = 1
) -> float:
    """The largest multiplier whose rounded widths cost at most ``target``.

    Raises:
        MorphError: exit code 1 when the narrowest widths already cost more than the target,
            or when even ``MAX_MULTIPLIER`` stays under it (no removable group).
    """

    def cost(w: float) -> float:
        return cm.resource(kind, multiplier_widths(cg, w, round_to).astype(np.float64))

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
    return low


def run_expand(
    model_path: str,
    output_path: str,
    *,
    input_shapes: dict[str, list[int]] | None = None,
    multiplier: float | None = None,
    target: tuple[str, str] | None = None,
    round_to: int = 1,
    init: Init | None = None,
) -> dict[str, Any]:
    """``morphnet expand``: one width multiplier, given or found for a target.

    Args:
        model_path: The input ONNX file (only read).
        output_path: Where the result is written (atomically); must not be the input.
        input_shapes: Concrete shapes for dynamic input dims. Defaults to None.
        multiplier: The width multiplier W. Defaults to None.
        target: ("flops" or "params", the flag's text such as "2G"). Defaults to None.
        round_to: Every changed width a multiple of this. Defaults to 1.
        init: How new channels start. Defaults to ``Init()`` (function-preserving).

    Returns:
        The report document (see ``report_widths.width_report``).

    Raises:
        MorphError: bad input (exit 2) or an unreachable target (exit 1).
    """
    check_output_path(model_path, output_path)
    if (multiplier is None) == (target is None):
        raise MorphError("give one of --multiplier, --target-flops and --target-params")
    if round_to < 1:
        raise MorphError(f"bad --round-to {round_to}: must be >= 1")
    init = init or Init()
    if init.mode != PRESERVE and init.noise:
        raise MorphError("--noise applies to --init preserve (random channels need no noise)")
    model = load_model(model_path, input_shapes)
    cg = build_channel_graph(model)
    cm = build_cost_model(model, cg)
    extra: dict[str, Any] = {}
    if target is not None:
        kind, text = target
        value = parse_target(text, cm.resource(kind), f"--target-{kind}")
        multiplier = target_multiplier(cm, cg, kind, value, round_to)
        extra["target"] = {"kind": kind, "value": round(value)}
    widths = multiplier_widths(cg, multiplier, round_to)
    copies = copies_for_widths(cg, class_importance(model, cg), widths)
    return resize(
        "expand",
        model,
        cg,
        cm,
        copies,
        output_path,
        init=init,
        mode="target" if target else "multiplier",
        multiplier=multiplier,
        initialization={"mode": init.mode, "noise": init.noise, "seed": init.seed},
        **extra,
    )
