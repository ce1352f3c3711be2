"""What ``shrink`` shows: per-layer widths before and after as bars (the MorphNet paper's
picture), the cost at every step, validation, and the verdict."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from morphcli.report.format import human
from morphcli.report.latency import render_latency_result

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
    latency = "latency_ms" in steps[0]
    if latency:
        table.add_column("ms (predicted)", justify="right")
    for step in steps:
        omega = step.get("multiplier")
        row = [
            step["step"],
            human(step["flops"]),
            human(step["params"]),
            "" if omega is None else f"{omega:.3f}",
        ]
        table.add_row(*row, *([f"{step['latency_ms']:.3f}"] if latency else []))
    console.print(table)
    for name, entry in report["validation"].items():
        console.print(f"validation, {name}: {_quality(entry)}")
    baseline = report.get("baseline")
    if baseline:
        console.print(
            f"validation, uniform baseline ({baseline['epochs']} epochs): "
            f"{_quality(baseline['validation'])}; written: [bold]{baseline['chosen']}[/bold]"
        )
    unit = {"flops": "FLOPs", "params": "params"}.get(report["resource"], report["resource"])
    share = report["reduction"]
    console.print(
        f"learning kept {share['learned_fraction']:.0%} of the input's {unit}, the multiplier "
        f"x{share['multiplier']:.3f} brought it to {share['final_fraction']:.0%}: "
        f"{share['by_learning']:.0%} of the reduction was learned"
    )
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if report.get("latency"):
        render_latency_result(report["latency"], console)
        console.print(f"written to {report['output']}")
        return
    verdict = "[green]met[/green]" if report["met"] else "[red]not met[/red]"
    console.print(
        f"[bold]{human(report['reached'])} {unit}[/bold] = {report['fraction_of_target']:.1%} "
        f"of the target {human(report['target'])} (band 97-100%): {verdict}; "
        f"written to {report['output']}"
    )
