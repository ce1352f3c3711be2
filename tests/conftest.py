"""Shared test fixtures: where the real and sample models are, and a CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
REAL_MODELS = ROOT.parent / "shared" / "real_models"
SAMPLE_MODELS = ROOT / "sample_models"

# Inputs the real models' README says must be given (dynamic dims other than batch).
REAL_INPUT_SHAPES = {"ppocr_mobile_v2.0_cls.onnx": {"x": [1, 3, 48, 192]}}


def real_model_paths() -> list[Path]:
    return sorted(REAL_MODELS.glob("*.onnx"))


def sample_model_paths() -> list[Path]:
    return sorted(SAMPLE_MODELS.glob("*.onnx"))


def input_shapes_for(path: Path) -> dict[str, list[int]] | None:
    return REAL_INPUT_SHAPES.get(path.name)


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def latency_cache(tmp_path_factory) -> str:
    """One latency-model cache for the session: a sample model is measured once."""
    return str(tmp_path_factory.mktemp("latency-cache"))
