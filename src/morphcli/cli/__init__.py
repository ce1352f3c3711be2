"""The ``morphnet`` command line: click commands, one module per command, and what they
share; nothing else lives here."""

from morphcli.cli.app import main

__all__ = ["main"]
