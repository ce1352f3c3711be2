"""Expand: a widened model computes the original's function; targets land just under."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from morphcli.cli import main
from morphcli.graph.builder import build_channel_graph
from morphcli.graph.model import load_model
from morphcli.resources.cost import CostModel, build_cost_model
from morphcli.surgery.apply import apply_copies
from morphcli.surgery.expand import run_expand
from morphcli.surgery.importance import class_importance
from morphcli.surgery.widths import copies_for_widths, multiplier_widths
from tests.conftest import input_shapes_for, real_model_paths, sample_model_paths
from tests.surgery.test_apply import GRAPH_ONLY_PREFIX, assert_outputs_close, float32_noise, run

SAMPLES = {p.stem: p for p in sample_model_paths()}
REAL_WEIGHTS = [p for p in real_model_paths() if not p.name.startswith(GRAPH_ONLY_PREFIX)]


def removable_flops(cm: CostModel, prunable: np.ndarray, widths: np.ndarray) -> float:
    """FLOPs of the terms between two removable widths (a depthwise conv has one width: it
    grows with W, not W^2)."""
    table = cm.flop_table
    values = table.term_values(widths.astype(float))
    keep = [
        len(t.factors) >= 2 and all(prunable[f.groups].all() for f in t.factors)
        for t in table.terms
    ]
    return float(values[np.array(keep, dtype=bool)].sum()) if any(keep) else 0.0


@pytest.mark.parametrize("path", sample_model_paths() + REAL_WEIGHTS, ids=lambda p: p.name)
def test_doubling_preserves_the_function(path):
    model = load_model(path, input_shapes_for(path))
    cg = build_channel_graph(model)
    cm = build_cost_model(model, cg)
    widths = multiplier_widths(cg, 2.0)
    widened = apply_copies(model, cg, copies_for_widths(cg, class_importance(model, cg), widths))
    original = model.to_proto()
    noise = lambda: float32_noise(original, model)  # noqa: E731
    assert_outputs_close(run(original, model), run(widened, model), path.name, noise)
    prunable = cg.prunable_mask()
    if removable_flops(cm, prunable, cm.widths):
        growth = removable_flops(cm, prunable, widths) / removable_flops(cm, prunable, cm.widths)
        assert growth == pytest.approx(4.0)
        assert cm.flops(widths) > cm.flops()


@pytest.mark.parametrize("path", list(SAMPLES.values()), ids=lambda p: p.stem)
def test_target_flops_lands_just_under(tmp_path, path):
    doc = run_expand(str(path), str(tmp_path / "o.onnx"), target=("flops", "180%"))
    assert 0.98 <= doc["after"]["flops"] / doc["target"]["value"] <= 1.0, doc["after"]
    assert doc["multiplier"] > 1


def test_target_params_and_shrinking_targets(tmp_path):
    up = run_expand(str(SAMPLES["resnet"]), str(tmp_path / "a.onnx"), target=("params", "300%"))
    assert 0.98 <= up["after"]["params"] / up["target"]["value"] <= 1.0
    down = run_expand(str(SAMPLES["unet"]), str(tmp_path / "b.onnx"), target=("flops", "40%"))
    assert 0.98 <= down["after"]["flops"] / down["target"]["value"] <= 1.0
    assert down["multiplier"] < 1


def test_multiplier_below_one_keeps_the_most_important(tmp_path):
    model = load_model(SAMPLES["resnet_fashion_trained"])
    cg = build_channel_graph(model)
    importance = class_importance(model, cg)
    path = SAMPLES["resnet_fashion_trained"]
    doc = run_expand(str(path), str(tmp_path / "o.onnx"), multiplier=0.5)
    for group, score in zip(cg.groups, importance, strict=True):
        entry = doc["groups"][group.id]
        if group.prunable:
            assert entry["after"] == int(np.floor(0.5 * group.width + 0.5))
            kept = np.setdiff1d(np.arange(group.width), entry["removed"])
            assert score[kept].min() >= score[entry["removed"]].max()


def test_pinned_groups_keep_their_width_and_are_reported(tmp_path):
    doc = run_expand(str(SAMPLES["inception"]), str(tmp_path / "o.onnx"), multiplier=1.5)
    pinned = [g for g in doc["groups"] if g["pinned_by"]]
    assert pinned and all(g["after"] == g["before"] for g in pinned)
    changed = [g for g in doc["groups"] if not g["pinned_by"]]
    assert all(g["after"] == int(np.floor(1.5 * g["before"] + 0.5)) for g in changed)
    assert all(g["replicas_added"] == g["after"] - g["before"] for g in changed)


def test_round_to_gives_multiples(tmp_path):
    doc = run_expand(str(SAMPLES["mobilenetv2"]), str(tmp_path / "o.onnx"), multiplier=1.3,
                     round_to=8)  # fmt: skip
    assert all(g["after"] % 8 == 0 for g in doc["groups"] if not g["pinned_by"])


@pytest.mark.parametrize("flags", [["--init", "random"], ["--noise", "0.05", "--seed", "3"]])
def test_cli_expand_keeps_the_function(cli, tmp_path, flags):
    path = SAMPLES["resnet"]
    out = tmp_path / "o.onnx"
    result = cli.invoke(main, ["expand", str(path), "-o", str(out), "--multiplier", "1.5",
                               "--json", *flags])  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["after"]["flops"] > doc["before"]["flops"]
    model = load_model(path)
    assert_outputs_close(run(model.to_proto(), model), run(onnx.load(str(out)), model), "cli")


def test_cli_expand_errors(cli, tmp_path):
    path = str(SAMPLES["plain_cnn"])
    out = str(tmp_path / "o.onnx")
    unreachable = cli.invoke(main, ["expand", path, "-o", out, "--target-flops", "1k"])
    assert unreachable.exit_code == 1 and "smallest reachable" in unreachable.output
    assert cli.invoke(main, ["expand", path, "-o", path, "--multiplier", "2"]).exit_code == 2
    assert cli.invoke(main, ["expand", path, "-o", out]).exit_code == 2
    both = ["--multiplier", "2", "--target-flops", "200%"]
    assert cli.invoke(main, ["expand", path, "-o", out, *both]).exit_code == 2
    noisy_random = ["--multiplier", "2", "--init", "random", "--noise", "0.1"]
    assert cli.invoke(main, ["expand", path, "-o", out, *noisy_random]).exit_code == 2
    human = cli.invoke(main, ["expand", path, "-o", out, "--multiplier", "2"])
    assert human.exit_code == 0 and "width multiplier 2" in human.output
