"""``morphnet prune``: remove dead channels, or the least important ones, without training."""

from __future__ import annotations

import click

from morphcli.cli.common import (
    calibrate_option,
    calibration,
    handle_errors,
    input_shapes_option,
    latency_options,
    latency_setup,
    one_target,
    parse_input_shapes,
    show_widths,
)
from morphcli.cli.options import ROUND_TO, Finite, Target


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="The ONNX file to write.")
@click.option(
    "--threshold",
    default=1e-3,
    show_default=True,
    type=Finite(min=0),
    help="A BN scale under this (absolute) counts as zero.",
)
@click.option(
    "--allow-approximate",
    is_flag=True,
    help="Also remove constant channels whose bias fold is not exact (padded convs).",
)
@click.option("--target-flops", type=Target(), help="Remove the least important channels to T.")
@click.option("--target-params", type=Target(), help="Parameter target, written the same way.")
@click.option(
    "--target-latency",
    metavar="T",
    help="Latency target, measured: 50% of the input's, or a time (3ms, 800us).",
)
@latency_options
@click.option(
    "--ratio",
    type=Finite(min=0, max=1, min_open=True),
    help="Keep this fraction of every removable group, by importance.",
)
@click.option(
    "--round-to",
    default=1,
    show_default=True,
    type=ROUND_TO,
    help="Every width a multiple of N (or its full width).",
)
@calibrate_option
@input_shapes_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@handle_errors
def prune(
    model_path: str,
    output: str,
    threshold: float,
    allow_approximate: bool,
    target_flops: str | None,
    target_params: str | None,
    target_latency: str | None,
    provider: str,
    ort_threads: int,
    batch: int,
    latency_cache: str | None,
    ratio: float | None,
    round_to: int,
    calibrate: str | None,
    input_shapes: tuple[str, ...],
    as_json: bool,
) -> None:
    """Remove dead channels, or the least important ones to a target, without training."""
    from morphcli.surgery.prune import run_prune

    shapes = parse_input_shapes(input_shapes)
    doc = run_prune(
        model_path,
        output,
        input_shapes=shapes,
        threshold=threshold,
        allow_approximate=allow_approximate,
        target=one_target(target_flops, target_params, target_latency),
        ratio=ratio,
        round_to=round_to,
        latency=latency_setup(provider, ort_threads, batch, latency_cache),
        finish=calibration(model_path, calibrate, shapes),
    )
    show_widths(doc, as_json)
