"""Structures as files: ``shrink --export-structure`` and ``morphnet apply`` round trip, fresh
initialisation for retraining, and files that do not fit the model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from morphcli.cli import main
from morphcli.graph.builder import build_channel_graph
from morphcli.graph.model import load_model
from morphcli.graph.runtime import run_model
from morphcli.surgery.structure import FORMAT, structure_doc
from tests.conftest import SAMPLE_MODELS

TRAINED = SAMPLE_MODELS / "resnet_fashion_trained.onnx"


def _widths(path) -> dict[frozenset, int]:
    model = load_model(path)
    cg = build_channel_graph(model)
    return {frozenset(g.producers): g.width for g in cg.groups if g.prunable and g.producers}


def _weights(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.fixture(scope="module")
def shrunk(tmp_path_factory):
    """A quick shrink of the trained ResNet to 50% FLOPs with its exported structure."""
    folder = tmp_path_factory.mktemp("shrunk")
    arrays = np.load(SAMPLE_MODELS / "fashion_mnist_subset.npz")
    data = folder / "data.npz"
    np.savez(data, x=arrays["x"][:128], y=arrays["y"][:128], x_val=arrays["x_val"][:64],
             y_val=arrays["y_val"][:64])  # fmt: skip
    out, structure = folder / "slim.onnx", folder / "widths.json"
    from click.testing import CliRunner

    result = CliRunner().invoke(main, [
        "shrink", str(TRAINED), "-o", str(out), "--target-flops", "50%", "--data", str(data),
        "--steps", "40", "--lambda", "1e-6", "--finetune-epochs", "0", "--batch-size", "32",
        "--threads", "1", "--export-structure", str(structure),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, structure


def test_apply_of_an_exported_structure_reproduces_its_widths_exactly(cli, shrunk, tmp_path):
    out, structure = shrunk
    doc = json.loads(structure.read_text())
    assert doc["format"] == FORMAT
    assert len(doc["groups"]) == sum(1 for w in _widths(TRAINED))
    applied = tmp_path / "applied.onnx"
    result = cli.invoke(main, ["apply", str(TRAINED), str(structure), "-o", str(applied)])
    assert result.exit_code == 0, result.output
    assert _widths(applied) == _widths(out)
    assert _widths(applied) != _widths(TRAINED)


def test_apply_can_widen_and_scratch_initialises_afresh(cli, tmp_path):
    model = load_model(TRAINED)
    cg = build_channel_graph(model)
    wider = np.where(cg.prunable_mask(), cg.widths() * 2, cg.widths())
    structure = tmp_path / "wide.json"
    structure.write_text(json.dumps(structure_doc(model, cg, wider)))
    out = tmp_path / "wide.onnx"
    result = cli.invoke(main, ["apply", str(TRAINED), str(structure), "-o", str(out), "--json",
                               "--init", "scratch", "--seed", "3"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(_widths(out).values()) == sorted(2 * w for w in _widths(TRAINED).values())
    weights = _weights(out)
    bn_scales = [v for n, v in weights.items() if v.ndim == 1 and np.all(v == 1.0)]
    assert len(bn_scales) >= 10  # BN scales and running variances start at 1
    conv = next(v for v in weights.values() if v.ndim == 4 and v.shape[1] > 1)
    fan_in = int(np.prod(conv.shape[1:]))
    assert np.std(conv) == pytest.approx(np.sqrt(2 / fan_in), rel=0.15)  # He normal
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 1, 28, 28), np.float32)}
    assert np.all(np.isfinite(run_model(onnx.load(str(out)), feeds)["output"]))


def test_a_structure_of_another_model_is_refused(cli, tmp_path):
    other = load_model(SAMPLE_MODELS / "plain_cnn.onnx")
    structure = tmp_path / "other.json"
    structure.write_text(json.dumps(structure_doc(other, build_channel_graph(other))))
    out = tmp_path / "out.onnx"
    result = cli.invoke(main, ["apply", str(TRAINED), str(structure), "-o", str(out)])
    assert result.exit_code == 2
    assert "exported from another model" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps({"format": "other/1", "groups": []}),
        json.dumps({"format": FORMAT, "groups": [{"producers": ["x"], "width": 0}]}),
        json.dumps({"format": FORMAT, "groups": [{"producers": [], "width": 3}]}),
        json.dumps({"format": FORMAT, "groups": [{"producers": ["x"], "width": True}]}),
    ],
)
def test_a_malformed_structure_file_is_exit_2(cli, tmp_path, content):
    structure = tmp_path / "bad.json"
    structure.write_text(content)
    result = cli.invoke(main, ["apply", str(TRAINED), str(structure), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "structure file" in result.output
