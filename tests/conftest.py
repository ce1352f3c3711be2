"""Shared test fixtures: where the real and sample models are, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
REAL_MODELS = ROOT.parent / "shared" / "real_models"
SAMPLE_MODELS = ROOT / "sample_models"

# Inputs the real models' README says must be given (dynamic dims other than batch).
REAL_INPUT_SHAPES = {"ppocr_mobile_v2.0_cls.onnx": {"x": [1, 3, 48, 192]}}


def torchrun_command(*args: str, processes: int = 2) -> list[str]:
    """``torchrun --standalone`` (a free rendezvous port) from this interpreter's torch."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(processes), *args,
    ]  # fmt: skip


def run_env() -> dict[str, str]:
    """The environment for subprocesses: this checkout on the path, one thread each."""
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def torchrun(*args: str, processes: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        torchrun_command(*args, processes=processes), env=run_env(), cwd=ROOT,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def real_model_paths() -> list[Path]:
    return sorted(REAL_MODELS.glob("*.onnx"))


# The quality benchmark's other trained seeds repeat the architectures of the samples
# (plain chain, residual, inverted residual): the tests do not run them again.
BENCH_SEEDS = {"vgg_fashion_trained", "resnet2x_fashion_trained", "mobilenetv2_fashion_trained"}


def sample_model_paths() -> list[Path]:
    return sorted(p for p in SAMPLE_MODELS.glob("*.onnx") if p.stem not in BENCH_SEEDS)


def input_shapes_for(path: Path) -> dict[str, list[int]] | None:
    return REAL_INPUT_SHAPES.get(path.name)


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def latency_cache(tmp_path_factory) -> str:
    """One latency-model cache for the session: a sample model is measured once."""
    return str(tmp_path_factory.mktemp("latency-cache"))


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """192 training and 64 validation images of the committed subset, with and without labels."""
    arrays = np.load(SAMPLE_MODELS / "fashion_mnist_subset.npz")
    folder = tmp_path_factory.mktemp("data")
    labelled = folder / "labelled.npz"
    np.savez(
        labelled,
        x=arrays["x"][:192],
        y=arrays["y"][:192],
        x_val=arrays["x_val"][:64],
        y_val=arrays["y_val"][:64],
    )
    unlabelled = folder / "unlabelled.npz"
    np.savez(unlabelled, x=arrays["x"][:96], x_val=arrays["x_val"][:32])
    return {"labelled": str(labelled), "unlabelled": str(unlabelled), "arrays": arrays}
