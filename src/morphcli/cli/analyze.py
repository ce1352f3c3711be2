"""``morphnet analyze``: channel groups, per-op FLOPs and parameters, budget gates."""

from __future__ import annotations

import sys

import click

from morphcli.cli.common import (
    handle_errors,
    input_shapes_option,
    latency_options,
    latency_setup,
    parse_input_shapes,
    print_error,
    print_json,
    stdout,
)
from morphcli.cli.options import Target
from morphcli.errors import EXIT_BUDGET


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=True))
@input_shapes_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--all-ops", is_flag=True, help="List every op, not only those with a cost.")
@click.option("--max-flops", type=Target(), help="Exit 1 when FLOPs exceed T (e.g. 300M).")
@click.option("--max-params", type=Target(), help="Exit 1 when parameters exceed T (e.g. 5M).")
@click.option(
    "--latency",
    is_flag=True,
    help="Measure latency with onnxruntime (cached): per op, and per channel of each group.",
)
@latency_options
@handle_errors
def analyze(
    model_path: str,
    input_shapes: tuple[str, ...],
    as_json: bool,
    all_ops: bool,
    max_flops: str | None,
    max_params: str | None,
    latency: bool,
    provider: str,
    ort_threads: int,
    batch: int,
    latency_cache: str | None,
) -> None:
    """Channel groups, per-op FLOPs and parameters, what can be removed, and (--latency)
    measured latency."""
    from morphcli.graph.builder import build_channel_graph
    from morphcli.graph.model import load_model
    from morphcli.report.analysis import analysis, render_analysis
    from morphcli.report.format import human
    from morphcli.resources.cost import build_cost_model
    from morphcli.resources.targets import parse_target

    setup = latency_setup(provider, ort_threads, batch, latency_cache) if latency else None
    model = load_model(model_path, parse_input_shapes(input_shapes))
    cg = build_channel_graph(model)
    cm = build_cost_model(model, cg)
    doc = analysis(model, cg, cm)
    if setup is not None:
        from morphcli.report.latency import latency_analysis, render_latency_analysis
        from morphcli.surgery.latency import latency_model

        measured = latency_model(model, cg, cm, setup)
        doc["latency"] = latency_analysis(model, cg, cm, measured, measured.bind(model, cg, cm))
    if as_json:
        print_json(doc)
    else:
        render_analysis(doc, stdout, all_ops=all_ops)
        if setup is not None:
            render_latency_analysis(doc["latency"], stdout)
    over = []
    for flag, text, key in (
        ("--max-flops", max_flops, "flops"),
        ("--max-params", max_params, "params"),
    ):
        if text is None:
            continue
        limit = parse_target(text, doc[key], flag)
        if doc[key] > limit:
            over.append(f"{key} {human(doc[key])} > {flag} {human(limit)}")
    if over:
        print_error(f"{'; '.join(over)} ({model_path})", "over budget")
        sys.exit(EXIT_BUDGET)
