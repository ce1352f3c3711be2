"""What every command shares: the consoles, the one error handler, JSON output and the
options that several commands take."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

from morphcli.cli.options import parse_input_shape
from morphcli.errors import EXIT_INTERNAL, MorphError

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


def calibrate_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--calibrate",
        metavar="DATA",
        help="Re-estimate BatchNormalization statistics after surgery on these inputs (an "
        ".npz, an image folder or module:function; a few hundred suffice, labels unused).",
    )(command)


def calibration(
    model_path: str, spec: str | None, input_shapes: dict[str, list[int]]
) -> Callable[[Any], Any] | None:
    """The ``--calibrate`` step, its data read and checked before any surgery (or None)."""
    if spec is None:
        return None
    from morphcli.learn.calibrate import Calibration

    return Calibration.prepare(model_path, spec, input_shapes)


def parse_input_shapes(values: tuple[str, ...]) -> dict[str, list[int]]:
    return dict(parse_input_shape(v) for v in values)


def print_json(doc: dict[str, Any]) -> None:
    """One JSON document on stdout, nothing else there."""
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def one_target(target_flops: str | None, target_params: str | None) -> tuple[str, str] | None:
    """("flops" | "params", text) of the one resource target given, or None."""
    if target_flops is not None and target_params is not None:
        raise MorphError("give --target-flops or --target-params, not both")
    if target_flops is not None:
        return "flops", target_flops
    return None if target_params is None else ("params", target_params)


def show_widths(doc: dict[str, Any], as_json: bool) -> None:
    from morphcli.report.widths import render_widths

    if as_json:
        print_json(doc)
    else:
        render_widths(doc, stdout)
