"""The steps ``prune`` and ``expand`` share after choosing copy counts: surgery, a fresh
analysis of the result (the costs reported are the written model's own), the report and
an atomic write. The input file is only read."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from morphcli.channels import ChannelGraph, build_channel_graph
from morphcli.cost import CostModel, build_cost_model
from morphcli.errors import MorphError
from morphcli.model import Model, model_from_proto, save_model
from morphcli.report_widths import width_report
from morphcli.surgery import Init, apply_copies


def check_output_path(model_path: str, output_path: str) -> None:
    """Refuse to write over the input model or onto a directory (exit code 2)."""
    same = os.path.realpath(output_path) == os.path.realpath(model_path) or (
        os.path.exists(output_path)
        and os.path.exists(model_path)
        and os.path.samefile(output_path, model_path)
    )
    if same:
        raise MorphError(
            "-o is the input model: write the result to another file", file=output_path
        )
    if os.path.isdir(output_path):
        raise MorphError("-o is a directory: give a file name", file=output_path)


def costs(cm: CostModel) -> dict[str, float]:
    return {"flops": cm.flops(), "params": cm.params()}


def resize(
    command: str,
    model: Model,
    cg: ChannelGraph,
    cm: CostModel,
    copies: list[np.ndarray],
    output_path: str,
    init: Init | None = None,
    output_deltas: dict[str, np.ndarray] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Apply ``copies``, measure the result, write it atomically and return the report.

    A ``target`` in ``extra`` ({"kind", "value"}) gets the reached amount added.
    """
    proto = apply_copies(model, cg, copies, init=init, output_deltas=output_deltas)
    result = model_from_proto(proto, output_path, model.input_shapes)
    after = costs(build_cost_model(result, build_channel_graph(result)))
    if extra.get("target"):
        extra["target"]["reached"] = round(after[extra["target"]["kind"]])
    doc = width_report(command, model.path, output_path, cg, copies, costs(cm), after, **extra)
    save_model(proto, output_path)
    return doc
