"""The ``morphnet`` command group: every command, registered from its own module.

Exit codes: 0 ok, 1 budget not met / check failed, 2 bad input, 3 internal error.
Commands that train import torch inside their own function, so ``analyze`` starts fast.
"""

from __future__ import annotations

import click

from morphcli import __version__
from morphcli.cli.analyze import analyze
from morphcli.cli.apply import apply
from morphcli.cli.expand import expand
from morphcli.cli.prune import prune
from morphcli.cli.shrink import shrink


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="morphnet")
def main() -> None:
    """Slim trained ONNX networks to a FLOPs or parameter budget with MorphNet."""


for _command in (analyze, prune, expand, shrink, apply):
    main.add_command(_command)
