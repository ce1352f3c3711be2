"""The ``morphnet`` command group: every command, registered from its own module.

Exit codes: 0 ok, 1 budget not met / check failed, 2 bad input, 3 internal error.
Commands that train import torch inside their own function, so ``analyze`` starts fast.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from morphcli import __version__
from morphcli.cli.analyze import analyze
from morphcli.cli.apply import apply
from morphcli.cli.common import print_error, usage_error_line
from morphcli.cli.expand import expand
from morphcli.cli.prune import prune
from morphcli.cli.shrink import shrink
from morphcli.errors import EXIT_BAD_INPUT


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a CI job cancelled or timed out) stops a run as Ctrl-C does: temporary files
    removed, the last checkpoint kept for ``--resume``, exit code 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class CommandGroup(click.Group):
    """click's group, but a usage error (a bad flag value, an unknown option, a missing
    argument) is one line on stderr with exit code 2, like every other error, and SIGTERM
    stops a run as Ctrl-C does."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            with sigterm_as_interrupt():
                code = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            print_error("stopped by Ctrl-C", "interrupted")
            sys.exit(130)
        except click.ClickException as error:
            print_error(usage_error_line(error))
            sys.exit(EXIT_BAD_INPUT if isinstance(error, click.UsageError) else error.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="morphnet")
def main() -> None:
    """Slim trained ONNX networks to a FLOPs or parameter budget with MorphNet."""


for _command in (analyze, prune, expand, shrink, apply):
    main.add_command(_command)
