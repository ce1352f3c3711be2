"""The analysis: a JSON-ready dict, and its rich rendering.

The dict is the single source: ``--json`` prints it as is and the tables are drawn from it,
so the human and machine views never disagree.
"""

from __future__ import annotations

from typing import Any

import onnx_graphsurgeon as gs
from rich.console import Console
from rich.table import Table

from morphcli.graph.channels import ChannelGraph
from morphcli.graph.model import Model
from morphcli.report.format import human
from morphcli.resources.cost import CostModel

MAX_GROUP_PRODUCERS_SHOWN = 3


def _groups_of(cg: ChannelGraph, tensors: list[gs.Tensor]) -> list[int]:
    found: dict[int, None] = {}
    for tensor in tensors:
        if isinstance(tensor, gs.Constant):
            continue
        for gid in cg.tensor_groups(tensor.name):
            found[gid] = None
    return list(found)


def analysis(model: Model, cg: ChannelGraph, cm: CostModel) -> dict[str, Any]:
    """The ``analyze --json`` document (schema in README.md)."""
    op_flops = cm.flop_table.by_node(cm.widths)
    op_params = cm.param_table.by_node(cm.widths)
    flops_per_channel = cm.per_channel("flops")
    params_per_channel = cm.per_channel("params")
    ops = []
    for node in model.graph.nodes:
        out = node.outputs[0].name if node.outputs else None
        ops.append(
            {
                "name": node.name,
                "op_type": node.op,
                "output_shape": list(model.shapes.get(out, ())) if out else [],
                "flops": round(op_flops.get(node.name, 0.0)),
                "params": round(op_params.get(node.name, 0.0)),
                "groups_in": _groups_of(cg, node.inputs),
                "groups_out": _groups_of(cg, node.outputs),
            }
        )
    groups = []
    for group in cg.groups:
        pin = group.pinned_by
        groups.append(
            {
                "id": group.id,
                "channels": group.width,
                "prunable": group.prunable,
                "pinned_by": None if pin is None else {"op": pin.node, "reason": pin.reason},
                "producers": group.producers,
                "flops_per_channel": round(flops_per_channel[group.id]),
                "params_per_channel": round(params_per_channel[group.id]),
            }
        )
    return {
        "model": model.path,
        "inputs": {name: list(shape) for name, shape in model.input_shapes.items()},
        "flops": round(cm.flops()),
        "params": round(cm.params()),
        "ops": ops,
        "groups": groups,
        "warnings": list(cg.warnings),
    }


def render_analysis(doc: dict[str, Any], console: Console, all_ops: bool = False) -> None:
    """Per-op table, per-group table, totals and warnings, readable at 80 columns."""
    inputs = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in doc["inputs"].items())
    console.print(f"[bold]{doc['model']}[/bold]  inputs: {inputs}")
    ops = doc["ops"] if all_ops else [o for o in doc["ops"] if o["flops"] or o["params"]]
    by_name = {o["name"]: o for o in doc["ops"]}
    table = Table(title="Ops", title_justify="left", expand=False, pad_edge=False)
    table.add_column("op", overflow="fold", max_width=28)
    table.add_column("type", overflow="fold", max_width=18)
    table.add_column("out shape", overflow="fold", max_width=14)
    table.add_column("FLOPs", justify="right", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("groups in>out", overflow="fold", max_width=14)
    for op in ops:
        groups = ",".join(map(str, op["groups_in"])) + ">" + ",".join(map(str, op["groups_out"]))
        table.add_row(
            op["name"],
            op["op_type"],
            "x".join(map(str, op["output_shape"])),
            human(op["flops"]),
            human(op["params"]),
            groups,
        )
    console.print(table)
    hidden = len(doc["ops"]) - len(ops)
    if hidden:
        console.print(f"[dim]{hidden} ops with no FLOPs or params not shown (--all-ops)[/dim]")
    groups = Table(title="Channel groups", title_justify="left", pad_edge=False)
    groups.add_column("id", justify="right", no_wrap=True)
    groups.add_column("ch", justify="right", no_wrap=True)
    groups.add_column("FLOPs/ch", justify="right", no_wrap=True)
    groups.add_column("params/ch", justify="right", no_wrap=True)
    groups.add_column("removable, or pinned by", overflow="fold", ratio=1)
    for group in doc["groups"]:
        pin = group["pinned_by"]
        if pin is None:
            producers = group["producers"]
            shown = ", ".join(producers[:MAX_GROUP_PRODUCERS_SHOWN])
            more = len(producers) - MAX_GROUP_PRODUCERS_SHOWN
            status = f"[green]removable[/green] ({shown}{f' +{more}' if more > 0 else ''})"
        else:
            op_type = by_name[pin["op"]]["op_type"] if pin["op"] in by_name else pin["op"]
            where = pin["op"] if op_type == pin["op"] else f"{pin['op']} ({op_type})"
            status = f"[yellow]pinned[/yellow] by {where}: {pin['reason']}"
        groups.add_row(
            str(group["id"]),
            str(group["channels"]),
            human(group["flops_per_channel"]),
            human(group["params_per_channel"]),
            status,
        )
    console.print(groups)
    removable = sum(g["prunable"] for g in doc["groups"])
    console.print(
        f"[bold]FLOPs {human(doc['flops'])}[/bold] (2 x multiply-accumulates of Conv, "
        f"ConvTranspose, Gemm, MatMul at batch 1)  [bold]params {human(doc['params'])}[/bold] "
        f"(elements of float initializers)  groups: {removable} removable of {len(doc['groups'])}"
    )
    for warning in doc["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
