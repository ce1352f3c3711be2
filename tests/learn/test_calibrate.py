"""``--calibrate DATA``: BN statistics re-estimated after surgery lift a pruned model's
accuracy without any training, and bad data is refused before surgery."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from morphcli.cli import main
from morphcli.learn.objective import Objective
from morphcli.learn.train import evaluate
from morphcli.learn.wrapper import OnnxModule
from tests.conftest import SAMPLE_MODELS

TRAINED = str(SAMPLE_MODELS / "resnet_fashion_trained.onnx")


@pytest.fixture(scope="module")
def subset():
    return np.load(SAMPLE_MODELS / "fashion_mnist_subset.npz")


def _accuracy(path, subset) -> float:
    val = torch.utils.data.TensorDataset(
        torch.from_numpy(subset["x_val"]), torch.from_numpy(subset["y_val"])
    )
    return evaluate(OnnxModule.from_onnx(path), val, Objective(), 500, "cpu")[1]


def _running_means(path) -> list[np.ndarray]:
    graph = onnx.load(str(path)).graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return [values[n.input[3]] for n in graph.node if n.op_type == "BatchNormalization"]


def test_calibration_lifts_a_pruned_model_without_training(cli, tmp_path, subset):
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=subset["x"][:300])  # unlabelled: labels are not used
    plain, calibrated = tmp_path / "plain.onnx", tmp_path / "calibrated.onnx"
    for out, extra in ((plain, []), (calibrated, ["--calibrate", str(inputs)])):
        args = ["prune", TRAINED, "-o", str(out), "--target-flops", "50%", *extra]
        result = cli.invoke(main, args)
        assert result.exit_code == 0, result.output
    pairs = zip(_running_means(plain), _running_means(calibrated), strict=True)
    changed = [not np.allclose(a, b) for a, b in pairs]
    assert sum(changed) >= len(changed) // 2
    before, after = _accuracy(plain, subset), _accuracy(calibrated, subset)
    assert after > before + 0.15, f"{before:.3f} -> {after:.3f}"


def test_expand_takes_calibrate_too(cli, tmp_path, subset):
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=subset["x"][:64], y=subset["y"][:64])
    out = tmp_path / "wide.onnx"
    result = cli.invoke(
        main, ["expand", TRAINED, "-o", str(out), "--multiplier", "1.5", "--calibrate", str(inputs)]
    )
    assert result.exit_code == 0, result.output
    assert _accuracy(out, subset) > 0.8


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: np.savez(p, x=np.zeros((8, 3, 28, 28), np.float32)), "shape 3x28x28"),
        (lambda p: p.write_bytes(b"not an npz"), "not a readable .npz"),
    ],
)
def test_bad_calibration_data_is_refused_before_surgery(cli, tmp_path, make, message):
    data = tmp_path / "bad.npz"
    make(data)
    out = tmp_path / "out.onnx"
    args = ["prune", TRAINED, "-o", str(out), "--ratio", "0.5", "--calibrate", str(data)]
    result = cli.invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()
