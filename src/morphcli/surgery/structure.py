"""A model's structure as a file: the width of every removable group, keyed by the layers
that produce it. ``shrink --export-structure`` writes one; ``morphnet apply`` gives it to a
model (the input model, or any model with the same layers), inheriting the weights or freshly
initialised for retraining with the user's own recipe.

Schema (``FORMAT``)::

    {"format": "morphnet-structure/1", "model": "slim.onnx",
     "groups": [{"producers": ["/stem/Conv"], "width": 12}, ...]}
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from morphcli.errors import MorphError
from morphcli.graph.builder import build_channel_graph
from morphcli.graph.channels import ChannelGraph
from morphcli.graph.model import Model, load_model
from morphcli.ops import rule_for
from morphcli.resources.cost import build_cost_model
from morphcli.surgery.importance import class_importance
from morphcli.surgery.widths import copies_for_widths
from morphcli.surgery.write import check_output, write_result

FORMAT = "morphnet-structure/1"
INHERIT, SCRATCH = "inherit", "scratch"
# A structure may widen a group at most this many times (a sanity bound on the file).
MAX_WIDENING = 64


def structure_doc(model: Model, cg: ChannelGraph, widths: np.ndarray | None = None) -> dict:
    """The structure document of ``model`` at ``widths`` (default: its own widths)."""
    widths = cg.widths() if widths is None else np.asarray(widths)
    groups = [
        {"producers": list(g.producers), "width": int(widths[g.id])}
        for g in cg.groups
        if g.prunable and g.producers
    ]
    return {"format": FORMAT, "model": model.path, "groups": groups}


def read_structure(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a structure file (exit 2 for anything that is not one)."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as stream:
            doc = json.load(stream)
    except FileNotFoundError:
        raise MorphError("no such file", file=path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MorphError(f"not a structure file ({type(error).__name__})", file=path) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise MorphError(f"not a structure file: expected format {FORMAT!r}", file=path)
    groups = doc.get("groups")
    if not isinstance(groups, list) or not all(_is_entry(g) for g in groups):
        raise MorphError(
            "not a structure file: 'groups' must list {producers: [names], width: int >= 1}",
            file=path,
        )
    return doc


def _is_entry(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("producers"), list)
        and bool(entry["producers"])
        and all(isinstance(p, str) for p in entry["producers"])
        and isinstance(entry.get("width"), int)
        and not isinstance(entry["width"], bool)
        and entry["width"] >= 1
    )


def structure_widths(doc: dict[str, Any], cg: ChannelGraph, path: str) -> np.ndarray:
    """Every group's width under ``doc``: each entry names exactly one removable group of
    ``cg`` by its producers; groups the file does not name keep their width.

    Raises:
        MorphError: an entry matches no removable group, or a width is out of bounds.
    """
    by_producers = {frozenset(g.producers): g for g in cg.groups if g.prunable and g.producers}
    widths = cg.widths()
    for entry in doc["groups"]:
        group = by_producers.get(frozenset(entry["producers"]))
        if group is None:
            shown = ", ".join(entry["producers"][:2])
            raise MorphError(
                f"no removable group of the model is produced by {shown}: the structure was "
                "exported from another model",
                file=path,
            )
        if entry["width"] > MAX_WIDENING * group.width:
            raise MorphError(
                f"width {entry['width']} for {group.producers[0]} is over {MAX_WIDENING}x "
                f"its {group.width} channels",
                file=path,
            )
        widths[group.id] = entry["width"]
    return widths


def fresh_weights(model: Model, seed: int = 0) -> onnx.ModelProto:
    """``model`` with every constant that its op rule initialises (``OpRule.fresh_input``)
    drawn anew from ``seed``: He-normal filters, zero biases, unit BN scales..."""
    rng = np.random.default_rng(seed)
    graph = model.graph.copy()
    done: set[str] = set()
    for node in graph.nodes:
        rule = rule_for(node.op, node.domain)
        if rule is None:
            continue
        for index, tensor in enumerate(node.inputs):
            if not isinstance(tensor, gs.Constant) or tensor.name in done:
                continue
            values = np.asarray(tensor.values)
            if not np.issubdtype(values.dtype, np.floating):
                continue
            fresh = rule.fresh_input(node, index, values, rng)
            if fresh is not None:
                tensor.values = np.asarray(fresh, dtype=values.dtype)
                done.add(tensor.name)
    return dataclasses.replace(model, graph=graph).to_proto()


def run_apply(
    model_path: str,
    structure_path: str,
    output_path: str,
    *,
    input_shapes: dict[str, list[int]] | None = None,
    init: str = INHERIT,
    seed: int = 0,
    finish: Callable[[Model], onnx.ModelProto] | None = None,
) -> dict[str, Any]:
    """``morphnet apply``: give the model the structure's widths and write it.

    Args:
        model_path: The input ONNX file (only read).
        structure_path: A structure file (``read_structure``).
        output_path: Where the result is written (atomically); must not be the input.
        input_shapes: Concrete shapes for dynamic input dims. Defaults to None.
        init: "inherit" keeps the most important channels' weights (replicas where a group
            grows, as ``expand`` does); "scratch" initialises every weight afresh. Defaults
            to "inherit".
        seed: The seed of a fresh initialisation. Defaults to 0.
        finish: With "inherit", what turns the resized model into the one written (e.g. BN
            re-estimation). Defaults to None.

    Returns:
        The width report (as ``prune`` and ``expand`` give).
    """
    if init not in (INHERIT, SCRATCH):
        raise MorphError(f"bad --init {init!r}: expected {INHERIT} or {SCRATCH}")
    doc = read_structure(structure_path)
    model = load_model(model_path, input_shapes)
    check_output(model, output_path)
    cg = build_channel_graph(model)
    cm = build_cost_model(model, cg)
    widths = structure_widths(doc, cg, structure_path)
    copies = copies_for_widths(cg, class_importance(model, cg), widths)
    if init == SCRATCH:
        if finish is not None:
            raise MorphError("--init scratch starts every weight afresh: nothing to calibrate")
        finish = functools.partial(fresh_weights, seed=seed)
    return write_result(
        "apply", model, cg, cm, copies, output_path, finish=finish,
        structure=structure_path, initialization={"mode": init, "seed": seed},
    )  # fmt: skip
