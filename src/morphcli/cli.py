"""The ``morphnet`` command line: click commands and nothing else.

Exit codes: 0 ok, 1 budget not met / check failed, 2 bad input, 3 internal error.
Commands that train import torch inside their own function, so ``analyze`` starts fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

from morphcli import __version__
from morphcli.errors import EXIT_BUDGET, EXIT_INTERNAL, MorphError

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn MorphError into one line on stderr and its exit code; anything else is exit 3.

    Set MORPHCLI_DEBUG=1 to see the traceback of an internal error.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MorphError as error:
            stderr.print(f"[red]error:[/red] {error}", soft_wrap=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            stderr.print("[red]interrupted[/red]")
            sys.exit(130)
        except Exception as error:
            if os.environ.get("MORPHCLI_DEBUG"):
                raise
            stderr.print(
                f"[red]internal error:[/red] {type(error).__name__}: {error} "
                "(rerun with MORPHCLI_DEBUG=1 for the traceback, and please report it)",
                soft_wrap=True,
            )
            sys.exit(EXIT_INTERNAL)

    return wrapper


def input_shapes_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--input-shape",
        "input_shapes",
        multiple=True,
        metavar="NAME=1x3x224x224",
        help="Concrete shape of an input with dynamic dims (repeatable).",
    )(command)


def parse_input_shapes(values: tuple[str, ...]) -> dict[str, list[int]]:
    from morphcli.model import parse_input_shape

    return dict(parse_input_shape(v) for v in values)


def print_json(doc: dict[str, Any]) -> None:
    """One JSON document on stdout, nothing else there."""
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="morphnet")
def main() -> None:
    """Slim trained ONNX networks to a FLOPs or parameter budget with MorphNet."""


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=True))
@input_shapes_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--all-ops", is_flag=True, help="List every op, not only those with a cost.")
@click.option("--max-flops", metavar="T", help="Exit 1 when FLOPs exceed T (e.g. 300M).")
@click.option("--max-params", metavar="T", help="Exit 1 when parameters exceed T (e.g. 5M).")
@handle_errors
def analyze(
    model_path: str,
    input_shapes: tuple[str, ...],
    as_json: bool,
    all_ops: bool,
    max_flops: str | None,
    max_params: str | None,
) -> None:
    """Channel groups, per-op FLOPs and parameters, and what can be removed."""
    from morphcli.channels import build_channel_graph
    from morphcli.cost import build_cost_model, parse_target
    from morphcli.model import load_model
    from morphcli.report import analysis, human, render_analysis

    model = load_model(model_path, parse_input_shapes(input_shapes))
    cg = build_channel_graph(model)
    cm = build_cost_model(model, cg)
    doc = analysis(model, cg, cm)
    if as_json:
        print_json(doc)
    else:
        render_analysis(doc, stdout, all_ops=all_ops)
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
        stderr.print(f"[red]over budget:[/red] {'; '.join(over)} ({model_path})")
        sys.exit(EXIT_BUDGET)
