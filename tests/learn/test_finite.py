"""Finite or nothing: a run whose training goes NaN or Inf stops at once with exit 1, says
what went non-finite and what to try, and writes nothing (no model, no checkpoint)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from morphcli.cli import main
from morphcli.errors import EXIT_BUDGET, MorphError
from morphcli.learn.finite import check_step, check_weights
from tests.conftest import SAMPLE_MODELS

MODEL = str(SAMPLE_MODELS / "plain_cnn.onnx")
FAST = ["--batch-size", "16", "--threads", "1", "--finetune-epochs", "0", "--lambda", "1e-6"]


@pytest.fixture(scope="module")
def arrays():
    data = np.load(SAMPLE_MODELS / "fashion_mnist_subset.npz")
    return {k: data[k][:64] for k in ("x", "y", "x_val", "y_val")}


def _shrink(cli, tmp_path, data: dict, *extra: str):
    path = tmp_path / "data.npz"
    np.savez(path, **data)
    out = tmp_path / "out.onnx"
    argv = ["shrink", MODEL, "-o", str(out), "--target-flops", "50%", "--data", str(path)]
    return cli.invoke(main, [*argv, *FAST, *extra])


def _left(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name != "data.npz")


def test_a_huge_learning_rate_stops_with_exit_1_and_writes_nothing(cli, tmp_path, arrays):
    result = _shrink(cli, tmp_path, arrays, "--lr", "1e6", "--steps", "8")
    assert result.exit_code == EXIT_BUDGET, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: training diverged: ")
    assert "try a lower --lr (this run used 1e+06)" in line and "nothing was written" in line
    assert _left(tmp_path) == [], "a diverged run left files behind"


def test_nan_in_the_training_data_stops_at_its_batch(cli, tmp_path, arrays):
    x = arrays["x"].copy()
    x[17, 0, 3, 3] = np.nan
    result = _shrink(cli, tmp_path, {**arrays, "x": x}, "--steps", "8")
    assert result.exit_code == EXIT_BUDGET, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert "the loss is nan" in line and "input batch holds NaN or Inf" in line, line
    assert _left(tmp_path) == []


def test_nan_in_validation_data_is_named(cli, tmp_path, arrays):
    x_val = arrays["x_val"].copy()
    x_val[0, 0, 0, 0] = np.inf
    result = _shrink(cli, tmp_path, {**arrays, "x_val": x_val}, "--steps", "2")
    assert result.exit_code == EXIT_BUDGET, result.output
    assert "validation data holds NaN or Inf" in result.stderr
    assert _left(tmp_path) == []


@pytest.mark.parametrize(
    ("metrics", "x", "step", "hint"),
    [
        ({"loss": float("nan")}, torch.full((2, 3), float("inf")), 4, "input batch holds NaN"),
        ({"loss": float("inf")}, torch.zeros(2, 3), 0, "before any update"),
        ({"loss": 1.0, "penalty": float("nan")}, torch.zeros(2, 3), 9, "lower --lr (this run"),
    ],
)
def test_a_non_finite_step_says_what_and_what_to_try(metrics, x, step, hint):
    with pytest.raises(MorphError) as caught:
        check_step(metrics, x, step, "round 1 learn", 0.01)
    assert caught.value.exit_code == EXIT_BUDGET
    assert hint in str(caught.value) and f"round 1 learn step {step + 1}" in str(caught.value)
    check_step({"loss": 0.5, "penalty": None}, torch.full((1,), float("nan")), 3, "x", 0.1)


def test_weights_that_were_non_finite_before_training_stay_allowed():
    module = torch.nn.Linear(2, 2)
    module.register_buffer("clip_max", torch.tensor(float("inf")))
    check_weights(module, "epoch 1", 0.1, allowed=frozenset({"clip_max"}))
    with torch.no_grad():
        module.weight[0, 0] = float("nan")
    with pytest.raises(MorphError, match="weight holds NaN or Inf after epoch 1"):
        check_weights(module, "epoch 1", 0.1, allowed=frozenset({"clip_max"}))


def test_a_finite_loss_that_blew_up_stops_the_run():
    with pytest.raises(MorphError, match=r"the loss reached 7.8e\+04 at fine-tune step 12"):
        check_step({"loss": 7.8e4}, torch.zeros(2, 3), 11, "fine-tune", 0.01, first_loss=0.0)
    # A hundredfold rise over (1 + first) is tolerated: fine-tuning after surgery starts high.
    check_step({"loss": 99.0}, torch.zeros(2, 3), 11, "fine-tune", 0.01, first_loss=0.0)
    check_step({"loss": 250.0}, torch.zeros(2, 3), 11, "fine-tune", 0.01, first_loss=2.0)
