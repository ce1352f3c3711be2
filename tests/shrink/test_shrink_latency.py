"""`morphnet shrink --target-latency` end to end on a sample model with tiny data: it runs,
reports measured and predicted latency before and after, and its exit code follows the
measured verdict. No timing is asserted (timings are noisy on shared machines)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from morphcli.cli import main
from morphcli.graph.runtime import run_model
from tests.conftest import SAMPLE_MODELS

PLAIN = str(SAMPLE_MODELS / "plain_cnn.onnx")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    arrays = np.load(SAMPLE_MODELS / "fashion_mnist_subset.npz")
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, x=arrays["x"][:128], y=arrays["y"][:128], x_val=arrays["x_val"][:32],
             y_val=arrays["y_val"][:32])  # fmt: skip
    return str(path), arrays["x_val"][:1]


def test_shrink_to_a_latency_target_reports_measured_and_predicted(
    cli, tmp_path, data, latency_cache
):
    out, report_path = tmp_path / "slim.onnx", tmp_path / "report.json"
    args = [
        "shrink", PLAIN, "-o", str(out), "--target-latency", "60%", "--data", data[0],
        "--steps", "6", "--finetune-epochs", "1", "--batch-size", "32", "--threads", "1",
        "--ort-threads", "1", "--latency-cache", latency_cache, "--report", str(report_path),
        "--json",
    ]  # fmt: skip
    result = cli.invoke(main, args)
    assert result.exit_code in (0, 1), result.output
    report = json.loads(result.stdout)
    assert report == json.loads(report_path.read_text())
    assert report["resource"] == "latency"
    section = report["latency"]
    measured, predicted = section["measured_ms"], section["predicted_ms"]
    assert all(v > 0 for v in (*measured.values(), *predicted.values()))
    assert section["target_ms"] == pytest.approx(0.6 * measured["before"])
    assert report["reached"] == measured["after"]
    assert report["met"] == section["met"]
    assert result.exit_code == (0 if section["met"] else 1)
    steps = report["steps"]
    assert [s["step"] for s in steps] == ["input", "round 1 shrunk", "round 1 expanded", "final"]
    assert all(s["latency_ms"] > 0 for s in steps)
    assert steps[-1]["latency_ms"] == pytest.approx(predicted["after"])
    assert steps[0]["latency_ms"] == pytest.approx(predicted["before"])
    assert steps[-1]["flops"] < steps[0]["flops"]
    logits = run_model(onnx.load(out), {"input": data[1]})["output"]  # written either way
    assert logits.shape == (1, 10) and np.isfinite(logits).all()
