"""What every command shares: the consoles, the one error handler and the one way an error
line is printed, JSON output and the options that several commands take."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.text import Text

from morphcli.cli.options import InputShape, max_memory_option
from morphcli.errors import EXIT_BAD_INPUT, EXIT_BUDGET, EXIT_INTERNAL, MorphError, one_line

if TYPE_CHECKING:
    from morphcli.surgery.latency import LatencySetup

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)


def print_error(text: str, label: str = "error") -> None:
    """One line on stderr: control characters escaped, no markup or emoji read from it."""
    stderr.print(Text.assemble((f"{label}:", "red"), " ", one_line(text)), soft_wrap=True)


def usage_error_line(error: click.ClickException) -> str:
    """A click usage error (a bad flag value, an unknown option) as one line."""
    line = error.format_message()
    ctx = getattr(error, "ctx", None)
    if ctx is not None:
        line += f" (see {ctx.command_path} --help)"
    return line


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn MorphError into one line on stderr and its exit code; anything else is exit 3.

    Also sets the run's memory bound (``--max-memory``). Set MORPHCLI_DEBUG=1 to see the
    traceback of an internal error.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MorphError as error:
            print_error(str(error))
            sys.exit(error.exit_code)
        except click.ClickException as error:
            print_error(usage_error_line(error))
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            print_error("stopped by Ctrl-C", "interrupted")
            sys.exit(130)
        except MemoryError:
            print_error("out of memory: ask for less (a smaller --batch-size, input or multiplier)")
            sys.exit(EXIT_BAD_INPUT)
        except Exception as error:
            if os.environ.get("MORPHCLI_DEBUG"):
                raise
            print_error(
                f"{type(error).__name__}: {error} (rerun with MORPHCLI_DEBUG=1 for the "
                "traceback, and please report it)",
                "internal error",
            )
            sys.exit(EXIT_INTERNAL)

    return max_memory_option(wrapper)


def input_shapes_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--input-shape",
        "input_shapes",
        multiple=True,
        type=InputShape(),
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


def parse_input_shapes(values: tuple[tuple[str, list[int]], ...]) -> dict[str, list[int]]:
    return dict(values)


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
    note = lambda text: stderr.print(Text(one_line(text)), soft_wrap=True)  # noqa: E731
    return LatencySetup(runtime, cache, StepBar(stderr, "latency model"), note)


def exit_if_latency_missed(doc: dict[str, Any]) -> None:
    """Exit 1 (after the report is out) when a latency target was measured outside its band."""
    section = doc.get("latency")
    if section and "met" in section and not section["met"]:
        print_error(
            f"measured {section['fraction_of_target']:.1%} of {section['target']}, outside "
            f"{section['band'][0]:.0%}-{section['band'][1]:.0%} (the result was written: "
            f"{doc.get('output')})",
            "latency target not met",
        )
        sys.exit(EXIT_BUDGET)


def show_widths(doc: dict[str, Any], as_json: bool) -> None:
    from morphcli.report.widths import render_widths

    if as_json:
        print_json(doc)
    else:
        render_widths(doc, stdout)
    exit_if_latency_missed(doc)
