"""Every error is one line on stderr with its exit code: click's usage errors and a flag
value refused inside a command alike (exit 2, never 3); ``--max-memory`` holds for one run."""

from __future__ import annotations

import click
import pytest

from morphcli.cli import main
from morphcli.cli.common import handle_errors
from tests.conftest import SAMPLE_MODELS

MODEL = str(SAMPLE_MODELS / "plain_cnn.onnx")


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["prune", MODEL, "-o", "x.onnx", "--ratio", "nan"], "--ratio"),
        (["expand", MODEL, "-o", "x.onnx", "--multiplier", "inf"], "--multiplier"),
        (["shrink", MODEL, "-o", "x.onnx", "--lambda", "-1", "--data", "d.npz"], "--lambda"),
        (["analyze", MODEL, "--bogus"], "--bogus"),
        (["analyze"], "MODEL"),
    ],
)
def test_a_usage_error_is_one_line_with_exit_2(cli, argv, names):
    result = cli.invoke(main, argv)
    assert result.exit_code == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and names in line and "--help" in line


def test_a_bad_parameter_raised_inside_a_command_is_exit_2(cli):
    @click.command()
    @handle_errors
    def command() -> None:
        raise click.BadParameter("not today", param_hint="--mean")

    result = cli.invoke(command, [])
    assert result.exit_code == 2
    assert result.stderr == "error: Invalid value for --mean: not today\n"


def test_max_memory_holds_for_one_run_only(cli, tmp_path):
    out = str(tmp_path / "wide.onnx")
    argv = ["expand", MODEL, "-o", out, "--multiplier", "4"]
    refused = cli.invoke(main, [*argv, "--max-memory", "1M"])
    assert refused.exit_code == 2 and "raise it with --max-memory" in refused.stderr
    assert cli.invoke(main, argv).exit_code == 0
