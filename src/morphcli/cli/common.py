"""What every command shares: the consoles, the one error handler and the one way an error
line is printed, JSON output and the options that several commands take."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from morphcli.cli.options import InputShape, max_memory_option
from morphcli.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, MorphError, one_line

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
