"""Latency on the command line: ``--target-latency`` and the runtime flags validate like the
other targets (bad values exit 2 before anything is measured), ``analyze --latency`` reports
per-op latency without importing torch, and ``prune`` / ``expand`` report measured and
predicted latency with an exit code that follows the verdict. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import onnx
import pytest

from morphcli.cli import main
from tests.conftest import ROOT, SAMPLE_MODELS

TRAINED = str(SAMPLE_MODELS / "resnet_fashion_trained.onnx")
# Small enough to measure in a second, large enough that half its latency is reachable (on
# the trained ResNet, per-kernel overhead alone is over half of it at one thread).
PLAIN = str(SAMPLE_MODELS / "plain_cnn.onnx")
DATA = str(SAMPLE_MODELS / "fashion_mnist_subset.npz")
SECTION_KEYS = {
    "target", "target_ms", "runtime", "predicted_ms", "measured_ms", "measured_ratio",
    "ratio_interval", "runs", "fraction_of_target", "band", "met", "corrected", "model_error",
}  # fmt: skip


def _command(name: str, out) -> list[str]:
    base = [name, TRAINED, "-o", str(out)]
    return base + (["--data", DATA] if name == "shrink" else [])


@pytest.mark.parametrize("command", ["prune", "expand", "shrink"])
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--target-latency", "abc"], "bad --target-latency 'abc'"),
        (["--target-latency", "5"], "expected a share of the input's latency"),
        (["--target-latency", "0%"], "must be positive"),
        (["--target-latency", "-2ms"], "must be positive"),
        (["--target-latency", "50%", "--target-flops", "50%"], "give one target"),
        (["--target-latency", "50%", "--provider", "warp"], "bad --provider 'warp'"),
        (["--target-latency", "50%", "--batch", "0"], "--batch"),
        (["--target-latency", "50%", "--ort-threads", "-1"], "--ort-threads"),
    ],
)
def test_bad_latency_flags_exit_2_before_measuring(cli, tmp_path, command, flags, message):
    out = tmp_path / "o.onnx"
    result = cli.invoke(main, [*_command(command, out), *flags])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_analyze_latency_reports_ops_groups_and_the_model_check(cli, latency_cache):
    args = ["analyze", TRAINED, "--latency", "--ort-threads", "1", "--latency-cache"]
    result = cli.invoke(main, [*args, latency_cache, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    section = doc["latency"]
    assert section["runtime"] == {"provider": "CPUExecutionProvider", "threads": 1, "batch": 1}
    assert section["measured_ms"] > 0 and section["predicted_ms"] > 0
    assert 0 <= section["no_flops_share"] <= 1
    assert set(section["model_error"]) == {"configs", "median", "max"}
    # every op with FLOPs is in exactly one unit, with its FLOPs
    in_units = [n for unit in section["units"] for n in unit["nodes"]]
    assert len(in_units) == len(set(in_units))
    with_flops = {op["name"] for op in doc["ops"] if op["flops"]}
    assert with_flops <= set(in_units)
    assert sum(u["flops"] for u in section["units"]) == pytest.approx(doc["flops"], rel=1e-6)
    prunable = [g["id"] for g in doc["groups"] if g["prunable"]]
    assert [g["id"] for g in section["groups"]] == prunable
    assert all(g["ms_per_channel"] >= 0 for g in section["groups"])
    assert any(g["ms_per_channel"] > 0 for g in section["groups"])
    human = cli.invoke(main, [*args, latency_cache])
    assert human.exit_code == 0 and "us/ch" in human.stdout and "held-out" in human.stdout


def test_analyze_latency_does_not_import_torch(latency_cache):
    code = (
        "import sys\n"
        "from morphcli.cli import main\n"
        f"sys.argv = ['morphnet', 'analyze', {TRAINED!r}, '--latency', '--ort-threads', '1',"
        f" '--latency-cache', {latency_cache!r}, '--json']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "latency" in json.loads(proc.stdout)


@pytest.mark.parametrize(("command", "target"), [("prune", "50%"), ("expand", "150%")])
def test_a_latency_target_reports_measured_and_predicted(
    cli, tmp_path, latency_cache, command, target
):
    out = tmp_path / "o.onnx"
    flags = ["--target-latency", target, "--ort-threads", "1", "--latency-cache", latency_cache]
    result = cli.invoke(main, [command, PLAIN, "-o", str(out), *flags, "--json"])
    assert result.exit_code in (0, 1), result.output
    doc = json.loads(result.stdout)
    section = doc["latency"]
    assert set(section) == SECTION_KEYS
    measured, predicted = section["measured_ms"], section["predicted_ms"]
    assert all(v > 0 for v in (*measured.values(), *predicted.values()))
    share = float(target[:-1]) / 100
    assert section["target_ms"] == pytest.approx(share * measured["before"])
    assert section["fraction_of_target"] == pytest.approx(measured["after"] / section["target_ms"])
    low, high = section["band"]
    assert section["met"] == (low <= section["fraction_of_target"] <= high)
    assert result.exit_code == (0 if section["met"] else 1)
    if not section["met"]:
        assert "latency target not met" in result.stderr
    onnx.checker.check_model(onnx.load(out), full_check=True)  # written either way
    smaller = doc["after"]["flops"] < doc["before"]["flops"]
    assert smaller == (command == "prune")


def test_a_latency_fallback_replaces_a_choice_measured_over_the_band(tmp_path, latency_cache):
    """When the first chooser's result, measured, stays over the band (here it removes
    nothing, so it measures about twice a 50% target), the fallback's choice is written
    instead; the first one is measured, never written."""
    import numpy as np

    from morphcli.graph.builder import build_channel_graph
    from morphcli.graph.model import load_model
    from morphcli.graph.runtime import Runtime
    from morphcli.resources.cost import build_cost_model
    from morphcli.resources.targets import parse_latency_target
    from morphcli.surgery.importance import class_importance
    from morphcli.surgery.latency import LatencySetup
    from morphcli.surgery.latency_target import write_to_latency
    from morphcli.surgery.prune import ratio_copies, target_ratio

    model = load_model(PLAIN)
    cg = build_channel_graph(model)
    cm = build_cost_model(model, cg)
    importance = class_importance(model, cg)
    chosen: list[str] = []

    def nothing(resource, aim):
        chosen.append("nothing")
        return [np.ones(g.width, dtype=np.int64) for g in cg.groups], {}

    def by_ratio(resource, aim):
        chosen.append("ratio")
        ratio = target_ratio(resource, cg, aim)
        return ratio_copies(cg, importance, ratio), {"ratio": ratio}

    out = tmp_path / "o.onnx"
    setup = LatencySetup(Runtime(threads=1), latency_cache)
    doc = write_to_latency(
        "prune", model, cg, cm, parse_latency_target("50%"), setup, nothing, str(out),
        fallback=by_ratio, mode="target",
    )  # fmt: skip
    assert chosen[0] == "nothing" and "ratio" in chosen
    assert doc["latency"]["corrected"]
    assert doc["after"]["flops"] < 0.9 * doc["before"]["flops"]  # the ratio's choice
    assert doc["latency"]["fraction_of_target"] < 1.5
