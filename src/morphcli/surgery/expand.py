"""``morphnet expand``: one width multiplier for every removable group (MorphNet's uniform
expansion), given or fitted to a resource target (``widths``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from morphcli.errors import MorphError
from morphcli.graph.builder import build_channel_graph
from morphcli.graph.model import Model, load_model
from morphcli.resources.cost import build_cost_model
from morphcli.resources.memory import check_widths_fit
from morphcli.resources.resource import Resource, resource_kind
from morphcli.resources.targets import parse_latency_target, parse_target
from morphcli.surgery.apply import PRESERVE, Init
from morphcli.surgery.importance import class_importance
from morphcli.surgery.latency import LatencySetup
from morphcli.surgery.latency_target import write_to_latency
from morphcli.surgery.widths import copies_for_widths, multiplier_widths, target_multiplier
from morphcli.surgery.write import check_output, write_result


def run_expand(
    model_path: str,
    output_path: str,
    *,
    input_shapes: dict[str, list[int]] | None = None,
    multiplier: float | None = None,
    target: tuple[str, str] | None = None,
    round_to: int = 1,
    init: Init | None = None,
    latency: LatencySetup | None = None,
    finish: Callable[[Model], onnx.ModelProto] | None = None,
) -> dict[str, Any]:
    """``morphnet expand``: one width multiplier, given or found for a target.

    Args:
        model_path: The input ONNX file (only read).
        output_path: Where the result is written (atomically); must not be the input.
        input_shapes: Concrete shapes for dynamic input dims. Defaults to None.
        multiplier: The width multiplier W. Defaults to None.
        target: ("flops", "params" or "latency", the flag's text such as "2G"). Defaults
            to None.
        round_to: Every changed width a multiple of this. Defaults to 1.
        init: How new channels start. Defaults to ``Init()`` (function-preserving).
        latency: How a latency target is measured. Defaults to ``LatencySetup()``.
        finish: What turns the resized model into the one written (``--calibrate``: BN
            statistics re-estimated). Defaults to None.

    Returns:
        The report document (see ``report_widths.width_report``).

    Raises:
        MorphError: bad input (exit 2) or an unreachable target (exit 1).
    """
    if (multiplier is None) == (target is None):
        raise MorphError(
            "give one of --multiplier, --target-flops, --target-params and --target-latency"
        )
    if round_to < 1:
        raise MorphError(f"bad --round-to {round_to}: must be >= 1")
    init = init or Init()
    if init.mode != PRESERVE and init.noise:
        raise MorphError("--noise applies to --init preserve (random channels need no noise)")
    latency_target = None
    if target is not None and target[0] == "latency":
        latency_target = parse_latency_target(target[1])
    model = load_model(model_path, input_shapes)
    check_output(model, output_path)
    cg = build_channel_graph(model)
    cm = build_cost_model(model, cg)
    importance = class_importance(model, cg)
    initialization = {"mode": init.mode, "noise": init.noise, "seed": init.seed}
    if latency_target is not None:

        def choose(resource: Resource, aim: float) -> tuple[list[np.ndarray], dict]:
            omega = target_multiplier(resource, cg, aim, round_to)
            widths = multiplier_widths(cg, omega, round_to)
            check_widths_fit(model, cg, cm, widths, f"--target-latency {target[1]}")
            copies = copies_for_widths(cg, importance, widths)
            return copies, {"multiplier": omega}

        return write_to_latency(
            "expand", model, cg, cm, latency_target, latency or LatencySetup(), choose,
            output_path, init=init, finish=finish, mode="target",
            initialization=initialization,
        )  # fmt: skip
    extra: dict[str, Any] = {}
    cause = f"--multiplier {multiplier:g}" if multiplier is not None else ""
    if target is not None:
        kind, text = target
        resource = resource_kind(kind).bind(model, cg, cm)
        value = parse_target(text, resource.value(cg.widths()), f"--target-{kind}")
        multiplier = target_multiplier(resource, cg, value, round_to)
        extra["target"] = {"kind": kind, "value": round(value)}
        cause = f"--target-{kind} {text}"
    widths = multiplier_widths(cg, multiplier, round_to)
    check_widths_fit(model, cg, cm, widths, cause)
    copies = copies_for_widths(cg, importance, widths)
    return write_result(
        "expand",
        model,
        cg,
        cm,
        copies,
        output_path,
        init=init,
        finish=finish,
        mode="target" if target else "multiplier",
        multiplier=multiplier,
        initialization=initialization,
        **extra,
    )
