"""What users see of latency: the ``analyze --latency`` section (per-op measured latency next
to FLOPs, the share of time FLOPs do not count, what one more channel of each group costs)
and the verdict of a latency target, each a JSON-ready dict and its rich rendering."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from morphcli.graph.channels import ChannelGraph
from morphcli.graph.model import Model
from morphcli.report.format import human
from morphcli.resources.cost import CostModel
from morphcli.resources.latency import LatencyModel, LatencyResource

UNITS_SHOWN = 20
GROUPS_SHOWN = 15


def latency_analysis(
    model: Model, cg: ChannelGraph, cm: CostModel, latency: LatencyModel, resource: LatencyResource
) -> dict[str, Any]:
    """The ``latency`` section of ``analyze --json --latency`` (schema in README.md)."""
    widths = cg.widths().astype(np.float64)
    op_flops = cm.flop_table.by_node(widths)
    op_types = {n.name: n.op for n in model.graph.nodes}
    predicted = resource.unit_times(widths)
    kernels: dict[int, list[str]] = {}
    for kernel in latency.kernels:
        if kernel["unit"] is not None:
            kernels.setdefault(kernel["unit"], []).append(kernel["name"])
    units = []
    for u, unit in enumerate(latency.units):
        nodes = [n for n in unit.nodes if n in op_types]
        if not nodes or (unit.measured_ms == 0 and u not in kernels):
            continue  # folded away by onnxruntime (shape computations, identities)
        units.append(
            {
                "nodes": nodes,
                "op_types": sorted({op_types[n] for n in nodes}),
                "flops": round(sum(op_flops.get(n, 0.0) for n in nodes)),
                "measured_ms": unit.measured_ms,
                "predicted_ms": float(predicted[u]),
                "kernels": kernels.get(u, []),
                "step": unit.fit.step,
                "align": unit.fit.align,
            }
        )
    kernel_ms = sum(u["measured_ms"] for u in units) or 1.0
    per_channel = resource.gradient(widths)
    flops_per_channel = cm.per_channel("flops")
    return {
        "runtime": latency.runtime,
        "measured_ms": latency.measured_ms,
        "predicted_ms": resource.value(widths),
        "scale": latency.scale,
        "model_error": {
            "configs": latency.check.get("configs"),
            "median": latency.check.get("median_abs_error"),
            "max": latency.check.get("max_abs_error"),
        },
        "no_flops_share": sum(u["measured_ms"] for u in units if not u["flops"]) / kernel_ms,
        "units": units,
        "groups": [
            {
                "id": g.id,
                "ms_per_channel": float(per_channel[g.id]),
                "flops_per_channel": round(flops_per_channel[g.id]),
            }
            for g in cg.groups
            if g.prunable
        ],
    }


def _names(nodes: list[str]) -> str:
    return nodes[0] + (f" +{len(nodes) - 1}" if len(nodes) > 1 else "")


def render_latency_analysis(section: dict[str, Any], console: Console) -> None:
    """The costliest units, the share FLOPs miss, and the costliest channels."""
    runtime = section["runtime"]
    total = sum(u["measured_ms"] for u in section["units"]) or 1.0
    table = Table(
        title=f"Latency on {runtime['provider']}, {runtime['threads'] or 'default'} thread(s), "
        f"batch {runtime['batch']} (ops as onnxruntime runs them)",
        title_justify="left",
        pad_edge=False,
    )
    table.add_column("ops", overflow="fold", max_width=28)
    table.add_column("types", overflow="fold", max_width=18)
    table.add_column("FLOPs", justify="right", no_wrap=True)
    table.add_column("ms", justify="right", no_wrap=True)
    table.add_column("share", justify="right", no_wrap=True)
    ranked = sorted(section["units"], key=lambda u: -u["measured_ms"])
    for unit in ranked[:UNITS_SHOWN]:
        table.add_row(
            _names(unit["nodes"]),
            ",".join(unit["op_types"]),
            human(unit["flops"]),
            f"{unit['measured_ms']:.3f}",
            f"{unit['measured_ms'] / total:.1%}",
        )
    console.print(table)
    if len(ranked) > UNITS_SHOWN:
        console.print(f"[dim]{len(ranked) - UNITS_SHOWN} more ops (--json lists all)[/dim]")
    groups = sorted(section["groups"], key=lambda g: -g["ms_per_channel"])
    per_channel = Table(title="Latency of one more channel", title_justify="left", pad_edge=False)
    per_channel.add_column("group", justify="right")
    per_channel.add_column("us/ch", justify="right")
    per_channel.add_column("FLOPs/ch", justify="right")
    for group in groups[:GROUPS_SHOWN]:
        per_channel.add_row(
            str(group["id"]),
            f"{1000 * group['ms_per_channel']:.3g}",
            human(group["flops_per_channel"]),
        )
    console.print(per_channel)
    error = section["model_error"]
    console.print(
        f"[bold]latency {section['measured_ms']:.3f} ms[/bold] measured (predicted "
        f"{section['predicted_ms']:.3f} ms; {section['no_flops_share']:.0%} of kernel time in "
        f"ops without FLOPs); latency model error on {error['configs']} held-out widths: "
        f"median {error['median']:.1%}, max {error['max']:.1%}"
    )


def render_latency_result(section: dict[str, Any], console: Console) -> None:
    """Measured and predicted latency before and after, and whether the target was met."""
    measured, predicted = section["measured_ms"], section["predicted_ms"]
    low, high = section["ratio_interval"]
    verdict = "[green]met[/green]" if section["met"] else "[red]not met[/red]"
    band = section["band"]
    console.print(
        f"latency measured {measured['before']:.3f} -> {measured['after']:.3f} ms "
        f"({section['measured_ratio']:.3f}x, 95% interval {low:.3f}-{high:.3f}, "
        f"{section['runs']} interleaved runs); predicted {predicted['before']:.3f} -> "
        f"{predicted['after']:.3f} ms"
    )
    console.print(
        f"[bold]{section['fraction_of_target']:.1%}[/bold] of the target {section['target']} "
        f"({section['target_ms']:.3f} ms; band {band[0]:.0%}-{band[1]:.0%}): {verdict}"
    )
