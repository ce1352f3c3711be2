"""``morphnet expand``: one width multiplier for every removable group."""

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
from morphcli.cli.options import ROUND_TO, SEED, Finite, Target


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="The ONNX file to write.")
@click.option(
    "--multiplier",
    type=Finite(min=0, min_open=True),
    help="Width multiplier W (1.5 widens, 0.5 shrinks by importance).",
)
@click.option("--target-flops", type=Target(), help="The largest uniform width within T FLOPs.")
@click.option("--target-params", type=Target(), help="Parameter target, written the same way.")
@click.option(
    "--target-latency",
    metavar="T",
    help="Latency target, measured: 50% of the input's, or a time (3ms, 800us).",
)
@latency_options
@click.option(
    "--round-to",
    default=1,
    show_default=True,
    type=ROUND_TO,
    help="Every width a multiple of N.",
)
@click.option(
    "--init",
    "init_mode",
    type=click.Choice(["preserve", "random"]),
    default="preserve",
    show_default=True,
    help="preserve: replicate channels (same function); random: fresh filters read with "
    "zero weights (same function at init).",
)
@click.option(
    "--noise",
    default=0.0,
    show_default=True,
    type=Finite(min=0),
    help="preserve: zero-sum noise (relative to each weight's std) that breaks replica symmetry.",
)
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of noise and init.")
@calibrate_option
@input_shapes_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@handle_errors
def expand(
    model_path: str,
    output: str,
    multiplier: float | None,
    target_flops: str | None,
    target_params: str | None,
    target_latency: str | None,
    provider: str,
    ort_threads: int,
    batch: int,
    latency_cache: str | None,
    round_to: int,
    init_mode: str,
    noise: float,
    seed: int,
    calibrate: str | None,
    input_shapes: tuple[str, ...],
    as_json: bool,
) -> None:
    """Change every removable width by one multiplier, function-preserving by default."""
    from morphcli.surgery.apply import Init
    from morphcli.surgery.expand import run_expand

    shapes = parse_input_shapes(input_shapes)
    doc = run_expand(
        model_path,
        output,
        input_shapes=shapes,
        multiplier=multiplier,
        target=one_target(target_flops, target_params, target_latency),
        round_to=round_to,
        latency=latency_setup(provider, ort_threads, batch, latency_cache),
        init=Init(init_mode, noise, seed),
        finish=calibration(model_path, calibrate, shapes),
    )
    show_widths(doc, as_json)
