"""``morphnet apply``: give a model an exported structure (per-group widths)."""

from __future__ import annotations

import click

from morphcli.cli.common import (
    calibrate_option,
    calibration,
    handle_errors,
    input_shapes_option,
    parse_input_shapes,
    show_widths,
)
from morphcli.cli.options import SEED


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=True))
@click.argument("structure_path", metavar="STRUCTURE", type=click.Path(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="The ONNX file to write.")
@click.option(
    "--init",
    "init_mode",
    type=click.Choice(["inherit", "scratch"]),
    default="inherit",
    show_default=True,
    help="inherit: keep the most important channels' weights (replicas where a group grows); "
    "scratch: fresh weights, for retraining from scratch.",
)
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of --init scratch.")
@calibrate_option
@input_shapes_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@handle_errors
def apply(
    model_path: str,
    structure_path: str,
    output: str,
    init_mode: str,
    seed: int,
    calibrate: str | None,
    input_shapes: tuple[str, ...],
    as_json: bool,
) -> None:
    """Give MODEL the widths of STRUCTURE (from shrink --export-structure)."""
    from morphcli.surgery.structure import run_apply

    shapes = parse_input_shapes(input_shapes)
    doc = run_apply(
        model_path,
        structure_path,
        output,
        input_shapes=shapes,
        init=init_mode,
        seed=seed,
        finish=calibration(model_path, calibrate, shapes),
    )
    show_widths(doc, as_json)
