"""The steps ``prune`` and ``expand`` share after choosing copy counts: surgery, a fresh
analysis of the result (the costs reported are the written model's own), the report and
an atomic write. The input file is only read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from morphcli.graph.builder import build_channel_graph
from morphcli.graph.channels import ChannelGraph
from morphcli.graph.model import Model, model_from_proto
from morphcli.outputs import OutputPlan, save_model
from morphcli.report.widths import width_report
from morphcli.resources.cost import CostModel, build_cost_model
from morphcli.surgery.apply import Init, apply_copies, check_result


def check_output(model: Model, output_path: str) -> None:
    """``-o`` through the one output check (``OutputPlan``), against the model's files."""
    plan = OutputPlan(model.input_files())
    plan.add("-o", output_path)
    plan.check()


def costs(cm: CostModel) -> dict[str, float]:
    return {"flops": cm.flops(), "params": cm.params()}


def write_result(
    command: str,
    model: Model,
    cg: ChannelGraph,
    cm: CostModel,
    copies: list[np.ndarray],
    output_path: str,
    init: Init | None = None,
    output_deltas: dict[str, np.ndarray] | None = None,
    finish: Callable[[Model], onnx.ModelProto] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Apply ``copies``, measure the result, write it atomically and return the report.

    ``finish`` turns the resized model into the one written (new weight values only, e.g.
    re-estimated BN statistics or a fresh initialisation). A ``target`` in ``extra``
    ({"kind", "value"}) gets the reached amount added.
    """
    proto = apply_copies(model, cg, copies, init=init, output_deltas=output_deltas)
    result = model_from_proto(proto, output_path, model.input_shapes)
    if finish is not None:
        proto = finish(result)
        check_result(proto, model)
    after = costs(build_cost_model(result, build_channel_graph(result)))
    if extra.get("target"):
        extra["target"]["reached"] = round(after[extra["target"]["kind"]])
    doc = width_report(command, model.path, output_path, cg, copies, costs(cm), after, **extra)
    save_model(proto, output_path)
    return doc
