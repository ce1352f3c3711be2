"""The committed sample models and data subset are valid, reproducible and as documented."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from sample_models.build import SAMPLE_DIR, SAMPLES, export_sample  # noqa: E402
from sample_models.nets import ResNetStyle  # noqa: E402

ONNX_FILES = sorted(SAMPLE_DIR.glob("*.onnx"))
EXPECTED_OUTPUT = {"unet": [1, 1, 28, 28]}  # every other sample is a 10-class classifier


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def test_every_sample_and_trained_model_is_committed() -> None:
    names = {path.stem for path in ONNX_FILES}
    assert set(SAMPLES) | {"resnet_fashion_trained"} <= names


@pytest.mark.parametrize("name", ["resnet", "mobilenetv2"])
def test_rebuild_matches_committed_file(name: str, tmp_path: Path) -> None:
    rebuilt_path = tmp_path / f"{name}.onnx"
    export_sample(name, rebuilt_path)
    committed = onnx.load(str(SAMPLE_DIR / f"{name}.onnx"))
    rebuilt = onnx.load(str(rebuilt_path))

    assert _op_types(rebuilt) == _op_types(committed)
    committed_inits = {i.name: numpy_helper.to_array(i) for i in committed.graph.initializer}
    rebuilt_inits = {i.name: numpy_helper.to_array(i) for i in rebuilt.graph.initializer}
    assert {k: v.shape for k, v in rebuilt_inits.items()} == {
        k: v.shape for k, v in committed_inits.items()
    }
    for key, value in committed_inits.items():
        np.testing.assert_array_equal(rebuilt_inits[key], value, err_msg=key)


@pytest.mark.parametrize("path", ONNX_FILES, ids=lambda p: p.stem)
def test_committed_model_is_valid_and_runs(path: Path) -> None:
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    session = _session(path)
    [inp] = session.get_inputs()
    assert (inp.name, inp.shape) == ("input", [1, 1, 28, 28])
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    (out,) = session.run(["output"], {"input": x})
    assert list(out.shape) == EXPECTED_OUTPUT.get(path.stem, [1, 10])
    assert np.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet", "resnet_fashion_trained"])
def test_batchnorm_is_unfolded(name: str) -> None:
    model = onnx.load(str(SAMPLE_DIR / f"{name}.onnx"))
    ops = _op_types(model)
    assert ops.count("BatchNormalization") == ops.count("Conv") == 15
    assert "Identity" not in ops


def test_folded_resnet_has_no_batchnorm() -> None:
    folded = _op_types(onnx.load(str(SAMPLE_DIR / "resnet_folded.onnx")))
    unfolded = _op_types(onnx.load(str(SAMPLE_DIR / "resnet.onnx")))
    assert "BatchNormalization" not in folded
    assert folded == [op for op in unfolded if op != "BatchNormalization"]


def test_subset_composition() -> None:
    data = np.load(SAMPLE_DIR / "fashion_mnist_subset.npz")
    assert data["x"].dtype == data["x_val"].dtype == np.float32
    assert data["y"].dtype == data["y_val"].dtype == np.int64
    assert data["x"].shape == (4000, 1, 28, 28)
    assert data["x_val"].shape == (1000, 1, 28, 28)
    assert data["x"].min() >= 0.0 and data["x"].max() <= 1.0
    assert np.bincount(data["y"]).tolist() == [400] * 10
    assert np.bincount(data["y_val"]).tolist() == [100] * 10


def test_trained_model_accuracy_on_subset() -> None:
    data = np.load(SAMPLE_DIR / "fashion_mnist_subset.npz")
    session = _session(SAMPLE_DIR / "resnet_fashion_trained.onnx")
    predictions = np.array(
        [session.run(["output"], {"input": x[None]})[0].argmax() for x in data["x_val"]]
    )
    assert (predictions == data["y_val"]).mean() >= 0.80


def test_trained_state_dict_rebuilds_the_onnx_model() -> None:
    model = ResNetStyle()
    model.load_state_dict(torch.load(SAMPLE_DIR / "resnet_fashion_trained.pt"))
    model.eval()
    x = np.load(SAMPLE_DIR / "fashion_mnist_subset.npz")["x_val"][:1]
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    (got,) = _session(SAMPLE_DIR / "resnet_fashion_trained.onnx").run(["output"], {"input": x})
    np.testing.assert_allclose(got, expected, atol=1e-4)
