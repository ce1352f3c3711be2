"""What commands show: the analysis as a JSON-ready dict, and its rich rendering.

The dict is the single source: ``--json`` prints it as is and the tables are drawn from it,
so the human and machine views never disagree.
"""

from __future__ import annotations

from typing import Any

import onnx_graphsurgeon as gs
from rich.console import Console
from rich.table import Table

from morphcli.channels import ChannelGraph
from morphcli.cost import CostModel
from morphcli.model import Model

MAX_GROUP_PRODUCERS_SHOWN = 3


def human(value: float) -> str:
    """1234567 -> '1.23M' (k, M, G, T)."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"


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


def _channels(shape: list[int]) -> str:
    return str(shape[1]) if len(shape) >= 2 else "-"


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


BAR_WIDTH = 18


def _bar(value: int, largest: int) -> str:
    filled = max(1, round(BAR_WIDTH * value / largest)) if value else 0
    return "█" * filled + " " * (BAR_WIDTH - filled)


def _layer_name(label: str) -> str:
    """A producer node name, shorter: no op-type tail, no scope repeated by the next one
    ('/stages/stages.0/conv1/conv1.0/Conv' -> 'stages.0/conv1.0')."""
    parts = [p for p in label.split("/") if p]
    if len(parts) > 1 and parts[-1][:1].isupper():
        parts = parts[:-1]
    kept = [p for p, after in zip(parts, [*parts[1:], ""], strict=True) if not after.startswith(p)]
    return "/".join(kept) or label


def render_width_bars(before: dict[str, int], after: dict[str, int], console: Console) -> None:
    """Per-layer widths before and after as paired bars (the MorphNet paper's picture)."""
    largest = max([*before.values(), *after.values(), 1])
    table = Table(title="Layer widths", title_justify="left", pad_edge=False, box=None)
    table.add_column("layer", overflow="fold", max_width=26)
    table.add_column("input", no_wrap=True)
    table.add_column("result", no_wrap=True)
    for label, width in before.items():
        new = after.get(label, 0)
        color = "green" if new > width else "red" if new < width else "white"
        table.add_row(
            _layer_name(label),
            f"[dim]{_bar(width, largest)}[/dim] {width:>4}",
            f"[{color}]{_bar(new, largest)}[/{color}] {new:>4}",
        )
    console.print(table)


def _quality(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    text = f"loss {entry['loss']:.4f}"
    if entry.get("accuracy") is not None:
        text += f", accuracy {entry['accuracy']:.2%}"
    return text


def render_shrink(report: dict[str, Any], console: Console) -> None:
    """The shrink report: widths chart, cost at every step, validation, and the verdict."""
    steps = report["steps"]
    render_width_bars(steps[0]["widths"], steps[-1]["widths"], console)
    table = Table(title="Steps", title_justify="left", pad_edge=False)
    table.add_column("step")
    table.add_column("FLOPs", justify="right")
    table.add_column("params", justify="right")
    table.add_column("multiplier", justify="right")
    for step in steps:
        omega = step.get("multiplier")
        table.add_row(
            step["step"],
            human(step["flops"]),
            human(step["params"]),
            "" if omega is None else f"{omega:.3f}",
        )
    console.print(table)
    for name, entry in report["validation"].items():
        console.print(f"validation, {name}: {_quality(entry)}")
    unit = "FLOPs" if report["resource"] == "flops" else "params"
    verdict = "[green]met[/green]" if report["met"] else "[red]not met[/red]"
    console.print(
        f"[bold]{human(report['reached'])} {unit}[/bold] = {report['fraction_of_target']:.1%} "
        f"of the target {human(report['target'])} (band 97-100%): {verdict}; "
        f"written to {report['output']}"
    )
