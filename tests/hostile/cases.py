"""The hostile-case generator: what a case is, the commands it runs, and ``generate``.

A case is a folder of files (a broken model, a lying data file, a FIFO where an output
goes) and the command runs to try on it, each with the exit code it must give. Every run
happens with the case folder as the working directory, so argv names files relatively.
``generate(root)`` builds every case under ``root`` deterministically (fixed seeds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.hostile.models import tiny_data, tiny_model

CLASSES = ("file", "graph", "external", "data", "flags", "outputs")
COMMANDS = ("analyze", "prune", "expand", "shrink")
# Two structure-learning steps, no fine-tuning, a fixed lambda: a successful shrink is short.
FAST = ["--steps", "2", "--finetune-epochs", "0", "--batch-size", "8", "--threads", "1"]
FAST += ["--lambda", "1e-5"]


@dataclass
class Run:
    """One command line and what it must do.

    ``expect``: the exit code(s) allowed. ``early``: refused before any work, so stderr is
    exactly one line and stdout is empty. ``writes``: what a successful run may create or
    replace (relative to the case folder); everything else must keep its bytes and mtime.
    """

    argv: list[str]
    expect: tuple[int, ...]
    early: bool = True
    writes: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        return self.argv[0]


@dataclass
class Case:
    klass: str
    name: str
    folder: Path
    runs: list[Run] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.klass}/{self.name}"


def command_argv(command: str, model: str = "model.onnx", data: str = "data.npz") -> list[str]:
    """The standard command line of each command on ``model``."""
    return {
        "analyze": ["analyze", model],
        "prune": ["prune", model, "-o", "out.onnx", "--ratio", "0.5"],
        "expand": ["expand", model, "-o", "out.onnx", "--multiplier", "1.5"],
        "shrink": [
            "shrink",
            model,
            "-o",
            "out.onnx",
            "--target-flops",
            "50%",
            "--data",
            data,
            *FAST,
        ],
    }[command]


def run(argv: list[str], expect: int | tuple[int, ...], early: bool | None = None, **kw) -> Run:
    """A Run; ``early`` defaults to "refused up front" for exit code 2."""
    codes = (expect,) if isinstance(expect, int) else tuple(expect)
    writes = kw.pop("writes", ("out.onnx",) if codes == (0,) and argv[0] != "analyze" else ())
    return Run(list(argv), codes, codes == (2,) if early is None else early, tuple(writes))


def standard_runs(
    expect: int | dict[str, int], model: str = "model.onnx", commands: tuple[str, ...] = COMMANDS
) -> list[Run]:
    """Every command of ``commands`` on ``model``, each expecting ``expect`` (or its entry)."""
    codes = expect if isinstance(expect, dict) else dict.fromkeys(commands, expect)
    return [run(command_argv(c, model), codes[c]) for c in commands if c in codes]


class Builder:
    """Collects cases: ``add`` makes the folder with the base files (the tiny model as
    ``model.onnx``, its data as ``data.npz``) and runs ``setup`` in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cases: list[Case] = []
        self.model = tiny_model()
        self.data = tiny_data()

    def add(
        self,
        klass: str,
        name: str,
        setup: Callable[[Path], object] | None,
        runs: list[Run],
        base: bool = True,
    ) -> Case:
        assert klass in CLASSES
        folder = self.root / klass / name
        folder.mkdir(parents=True)
        if base:
            (folder / "model.onnx").write_bytes(self.model.SerializeToString())
            np.savez(folder / "data.npz", **self.data)
        if setup is not None:
            setup(folder)
        case = Case(klass, name, folder, runs)
        self.cases.append(case)
        return case


def generate(root: Path) -> list[Case]:
    """Every hostile case, built under ``root`` (which must be empty)."""
    from tests.hostile import input_cases, model_cases

    builder = Builder(root)
    model_cases.file_cases(builder)
    model_cases.graph_cases(builder)
    model_cases.external_cases(builder)
    input_cases.data_cases(builder)
    input_cases.flag_cases(builder)
    input_cases.output_cases(builder)
    return builder.cases
