"""What every command shares: the consoles, the one error handler, JSON output and the
options that several commands take."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from morphcli.cli.options import parse_input_shape
from morphcli.errors import EXIT_BUDGET, EXIT_INTERNAL, MorphError

if TYPE_CHECKING:
    from morphcli.surgery.latency import LatencySetup

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
    return dict(parse_input_shape(v) for v in values)


def print_json(doc: dict[str, Any]) -> None:
    """One JSON document on stdout, nothing else there."""
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def one_target(
    target_flops: str | None, target_params: str | None, target_latency: str | None = None
) -> tuple[str, str] | None:
    """("flops" | "params" | "latency", text) of the one resource target given, or None."""
    given = [
        (kind, text)
        for kind, text in (
            ("flops", target_flops), ("params", target_params), ("latency", target_latency)
        )
        if text is not None
    ]  # fmt: skip
    if len(given) > 1:
        raise MorphError(f"give one target, not {' and '.join(f'--target-{k}' for k, _ in given)}")
    return given[0] if given else None


def latency_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Where latency is measured: --provider, --ort-threads, --batch, --latency-cache."""
    options = [
        click.option(
            "--latency-cache",
            metavar="DIR",
            type=click.Path(file_okay=False),
            help="Where measured latency models are kept (default $MORPHCLI_CACHE_DIR, else "
            "~/.cache/morphcli/latency).",
        ),
        click.option(
            "--batch",
            default=1,
            show_default=True,
            type=click.IntRange(1),
            help="Batch size latency is measured at.",
        ),
        click.option(
            "--ort-threads",
            default=0,
            show_default=True,
            type=click.IntRange(0),
            help="onnxruntime intra-op threads for latency (0: its default).",
        ),
        click.option(
            "--provider",
            default="cpu",
            show_default=True,
            help="onnxruntime execution provider for latency: cpu, cuda or a full name.",
        ),
    ]
    for option in options:
        command = option(command)
    return command


def latency_setup(provider: str, ort_threads: int, batch: int, cache: str | None) -> LatencySetup:
    """The LatencySetup of the flags, reporting on stderr (stdout stays clean for --json)."""
    from morphcli.graph.runtime import Runtime, resolve_provider
    from morphcli.report.progress import StepBar
    from morphcli.surgery.latency import LatencySetup

    runtime = Runtime(resolve_provider(provider), ort_threads, batch)
    note = lambda text: stderr.print(text, highlight=False, soft_wrap=True)  # noqa: E731
    return LatencySetup(runtime, cache, StepBar(stderr, "latency model"), note)


def exit_if_latency_missed(doc: dict[str, Any]) -> None:
    """Exit 1 (after the report is out) when a latency target was measured outside its band."""
    section = doc.get("latency")
    if section and "met" in section and not section["met"]:
        stderr.print(
            f"[red]latency target not met:[/red] measured {section['fraction_of_target']:.1%} "
            f"of {section['target']}, outside {section['band'][0]:.0%}-"
            f"{section['band'][1]:.0%} (the result was written: {doc.get('output')})",
            soft_wrap=True,
        )
        sys.exit(EXIT_BUDGET)


def show_widths(doc: dict[str, Any], as_json: bool) -> None:
    from morphcli.report.widths import render_widths

    if as_json:
        print_json(doc)
    else:
        render_widths(doc, stdout)
    exit_if_latency_missed(doc)
