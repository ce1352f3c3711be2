"""What ``prune`` and ``expand`` show: a JSON-ready report of widths and costs, and its
rich rendering (the tables are drawn from the dict, so both views agree)."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from morphcli.graph.channels import ChannelGraph
from morphcli.report.format import human
from morphcli.report.latency import render_latency_result

MAX_PINNED_SHOWN = 5


def width_report(
    command: str,
    model_path: str,
    output_path: str,
    cg: ChannelGraph,
    copies: list[np.ndarray],
    before: dict[str, float],
    after: dict[str, float],
    **extra: Any,
) -> dict[str, Any]:
    """The report document.

    Per group: width before and after, the removed channel indices (positions in the
    group's canonical order: the channel order of the group's first tensor), how many
    replicas were added, and what pins it. ``extra`` adds command-specific keys (mode,
    target, multiplier, kept candidates...).
    """
    groups = []
    for group, counts in zip(cg.groups, copies, strict=True):
        pin = group.pinned_by
        groups.append(
            {
                "id": group.id,
                "before": group.width,
                "after": int(np.sum(counts)),
                "removed": [int(i) for i in np.flatnonzero(counts == 0)],
                "replicas_added": int(np.sum(np.maximum(counts - 1, 0))),
                "pinned_by": None if pin is None else str(pin),
                "producers": group.producers,
            }
        )
    return {
        "command": command,
        "model": model_path,
        "output": output_path,
        **extra,
        "before": {k: round(v) for k, v in before.items()},
        "after": {k: round(v) for k, v in after.items()},
        "groups": groups,
    }


def _ratio(after: float, before: float) -> str:
    return f"{after / before:.3f}x" if before else "-"


def render_widths(doc: dict[str, Any], console: Console) -> None:
    """Totals before -> after, the groups whose width changed, and what stayed and why."""
    before, after = doc["before"], doc["after"]
    console.print(f"[bold]{doc['command']}[/bold] {doc['model']} -> {doc['output']}")
    totals = Table(title="Cost", title_justify="left", pad_edge=False)
    totals.add_column("")
    totals.add_column("before", justify="right")
    totals.add_column("after", justify="right")
    totals.add_column("ratio", justify="right")
    for key in ("flops", "params"):
        label = "FLOPs" if key == "flops" else "params"
        totals.add_row(
            label, human(before[key]), human(after[key]), _ratio(after[key], before[key])
        )
    console.print(totals)
    target = doc.get("target")
    if target:
        console.print(
            f"target {target['kind']} {human(target['value'])}: reached {human(target['reached'])}"
            f" ({target['reached'] / target['value']:.3f} of the target)"
        )
    if doc.get("latency"):
        render_latency_result(doc["latency"], console)
    if "multiplier" in doc:
        console.print(f"width multiplier {doc['multiplier']:.4g}")
    changed = [g for g in doc["groups"] if g["after"] != g["before"]]
    table = Table(title="Widths that changed", title_justify="left", pad_edge=False)
    table.add_column("group", justify="right", no_wrap=True)
    table.add_column("before", justify="right", no_wrap=True)
    table.add_column("after", justify="right", no_wrap=True)
    table.add_column("producers", overflow="fold", ratio=1)
    for group in changed:
        producers = ", ".join(group["producers"][:2]) + (
            f" +{len(group['producers']) - 2}" if len(group["producers"]) > 2 else ""
        )
        table.add_row(str(group["id"]), str(group["before"]), str(group["after"]), producers)
    if changed:
        console.print(table)
    else:
        console.print("no group changed width")
    pinned = [g for g in doc["groups"] if g["pinned_by"]]
    if pinned:
        console.print(f"{len(pinned)} pinned groups keep their width, e.g.:")
        for group in pinned[:MAX_PINNED_SHOWN]:
            console.print(f"  group {group['id']} ({group['before']} ch): {group['pinned_by']}")
    kept = doc.get("kept") or []
    if doc.get("folded"):
        console.print(f"{doc['folded']} constant channels folded into their consumers' biases")
    if kept:
        console.print(f"[yellow]{len(kept)} dead or constant channels kept:[/yellow]")
        for item in kept[:MAX_PINNED_SHOWN]:
            console.print(f"  group {item['group']} channel {item['index']}: {item['reason']}")
        if len(kept) > MAX_PINNED_SHOWN:
            console.print(f"  ... {len(kept) - MAX_PINNED_SHOWN} more (--json lists all)")
