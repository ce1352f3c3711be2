"""`morphnet shrink` end to end on the sample models: targets met, distillation, resume after
Ctrl-C, and bad input giving one clear line with exit 2 (1 for an unreachable target)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import onnx
import pytest

from morphcli.cli import main
from morphcli.graph.builder import build_channel_graph
from morphcli.graph.model import load_model
from morphcli.graph.runtime import run_model
from morphcli.learn.checkpoint import CHECKPOINT_NAME
from morphcli.resources.cost import build_cost_model
from morphcli.resources.resource import count_resource
from morphcli.shrink.config import WIDTH_FLOOR
from morphcli.surgery.widths import multiplier_widths, target_multiplier
from tests.conftest import ROOT, SAMPLE_MODELS
from tests.shrink.checkpoints import when_rewritten

TRAINED = str(SAMPLE_MODELS / "resnet_fashion_trained.onnx")
FAST = ["--batch-size", "32", "--threads", "1", "--finetune-epochs", "1"]


def _flops(path) -> float:
    model = load_model(path)
    return build_cost_model(model, build_channel_graph(model)).flops()


def _shrink(cli, model, out, target, data, *extra):
    args = ["shrink", str(model), "-o", str(out), "--target-flops", target, "--data", data]
    return cli.invoke(main, [*args, *FAST, *extra])


def test_shrink_learns_below_the_target_then_expands_to_it(cli, fashion, tmp_path):
    out, report_path = tmp_path / "slim.onnx", tmp_path / "report.json"
    result = _shrink(
        cli, TRAINED, out, "50%", fashion["labelled"], "--steps", "100",
        "--report", str(report_path), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    start = _flops(TRAINED)
    target = 0.5 * start
    reached = _flops(out)
    assert 0.97 * target <= reached <= target, f"reached {reached / target:.4f} of the target"
    report = json.loads(report_path.read_text())
    assert report == json.loads(result.stdout)
    assert [s["step"] for s in report["steps"]] == [
        "input", "round 1 shrunk", "round 1 expanded", "final",
    ]  # fmt: skip
    # Algorithm 1: learning aims below the target (0.9 x 50%), the multiplier grows it back.
    (record,) = report["rounds"]
    assert record["goal"] == pytest.approx(0.9 * target, rel=1e-3)
    shrunk, expanded = report["steps"][1], report["steps"][2]
    assert shrunk["flops"] < 0.95 * target, shrunk["flops"] / target
    assert expanded["multiplier"] > 1.0 and record["multiplier"] == expanded["multiplier"]
    assert report["reduction"]["by_learning"] == 1.0
    assert report["met"] and report["reached"] == round(reached)
    assert set(report["validation"]) == {"input", "round 1 learned", "final"}
    assert all(v["accuracy"] is not None for v in report["validation"].values())
    assert report["lambda"][0]["final"] != report["lambda"][0]["initial"]  # lambda auto steers
    assert {"prepare", "round 1 learn", "round 1 surgery", "finetune"} <= set(report["time_s"])
    # The penalty removed channels unevenly: the learned widths are not one scaled copy of
    # the input's (a uniform multiplier would keep every ratio within rounding).
    before, learned = report["steps"][0]["widths"], shrunk["widths"]
    ratios = np.array([learned[k] / before[k] for k in before])
    assert ratios.max() - ratios.min() > 0.2, ratios
    # --width-floor (default WIDTH_FLOOR): no group learned below that share of its width at
    # the uniform multiplier that alone meets the learning goal.
    model = load_model(TRAINED)
    cg = build_channel_graph(model)
    omega = target_multiplier(
        count_resource(build_cost_model(model, cg), "flops"), cg, record["goal"]
    )
    floors = multiplier_widths(cg, WIDTH_FLOOR * omega)
    ids = {g.producers[0]: g.id for g in cg.groups if g.prunable and g.producers}
    assert all(learned[k] >= floors[ids[k]] for k in learned), (learned, floors)
    assert record["width_floor"] == WIDTH_FLOOR
    assert report["steps"][-1]["widths"] == expanded["widths"]
    logits = run_model(onnx.load(out), {"input": fashion["arrays"]["x_val"][:1]})["output"]
    assert logits.shape == (1, 10) and np.isfinite(logits).all()


def _bn_scales(path) -> dict[str, np.ndarray]:
    proto = onnx.load(path)
    values = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    return {
        n.name: values[n.input[1]] for n in proto.graph.node if n.op_type == "BatchNormalization"
    }


def test_the_expansion_revives_dead_channels_with_their_scale_from_before_learning(
    cli, fashion, tmp_path
):
    """Learning zeroes the scales of the channels it kills; the expansion brings some back
    (learning aims under the target) with the scale they had in the input, not as
    constants. Without fine-tuning the written model is the expanded one."""
    out = tmp_path / "slim.onnx"
    result = _shrink(
        cli, TRAINED, out, "50%", fashion["labelled"], "--steps", "100", "--json",
        "--finetune-epochs", "0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    shrunk, expanded = report["steps"][1]["widths"], report["steps"][2]["widths"]
    before = report["steps"][0]["widths"]
    assert any(shrunk[k] < expanded[k] <= before[k] for k in shrunk)  # dead channels came back
    start, written = _bn_scales(TRAINED), _bn_scales(out)
    revived = 0
    for node, scales in written.items():
        assert np.all(np.abs(scales) > 1e-2), (node, scales)  # no channel is a constant
        revived += int(np.isin(scales, start[node]).sum())  # untouched since the input
    assert revived > 0


def test_a_fixed_lambda_stays_fixed_and_a_learning_that_removed_nothing_warns(
    cli, fashion, tmp_path
):
    out = tmp_path / "slim.onnx"
    result = _shrink(
        cli, TRAINED, out, "60%", fashion["labelled"], "--steps", "2", "--lambda", "1e-9",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["lambda"][0] == {"round": 1, "initial": 1e-9, "final": 1e-9}
    assert report["reduction"]["learned_fraction"] > 0.95
    assert report["reduction"]["by_learning"] < 0.2
    (warning,) = report["warnings"]
    assert "learning removed almost nothing" in warning
    assert "warning: round 1: learning removed almost nothing" in result.stderr


def test_baseline_uniform_trains_both_and_writes_the_better(cli, fashion, tmp_path):
    out = tmp_path / "slim.onnx"
    result = _shrink(
        cli, TRAINED, out, "50%", fashion["labelled"], "--steps", "12", "--baseline", "uniform",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    baseline = report["baseline"]
    # 12 steps of 6 per epoch (192 samples, batch 32) are 2 learning epochs, then 1 tuning.
    assert baseline["method"] == "uniform" and baseline["epochs"] == 3
    morphnet = report["validation"]["final"]["accuracy"]
    uniform = baseline["validation"]["accuracy"]
    assert baseline["chosen"] == ("uniform" if uniform > morphnet else "morphnet")
    assert "uniform baseline" in result.stderr
    # The written model is the chosen one: uniform widths are one scaled copy of the input's.
    model = load_model(out)
    cg = build_channel_graph(model)
    written = {g.producers[0]: g.width for g in cg.groups if g.prunable and g.producers}
    assert written == report["steps"][-1]["widths"]
    chosen_steps = report["steps"][2]["widths"]  # MorphNet's expanded structure
    assert (written == chosen_steps) == (baseline["chosen"] == "morphnet")


def test_distill_weight_mixes_the_losses_and_needs_labels(cli, fashion, tmp_path):
    out = tmp_path / "slim.onnx"
    args = ("--steps", "2", "--distill-weight", "0.5")
    result = _shrink(cli, TRAINED, out, "70%", fashion["labelled"], *args)
    assert result.exit_code == 0, result.output
    assert "cross entropy + distillation (weight 0.5)" in result.stderr
    result = _shrink(cli, TRAINED, tmp_path / "u.onnx", "70%", fashion["unlabelled"], *args)
    assert result.exit_code == 2
    assert "--distill-weight mixes cross entropy on labels with distillation" in result.stderr
    assert not (tmp_path / "u.onnx").exists()


def test_a_params_target_is_met_in_params(cli, fashion, tmp_path):
    out = tmp_path / "slim.onnx"
    args = ["shrink", TRAINED, "-o", str(out), "--target-params", "70%", "--steps", "2"]
    result = cli.invoke(main, [*args, "--data", fashion["labelled"], *FAST, "--json"])
    assert result.exit_code == 0, result.output
    model = load_model(out)
    params = build_cost_model(model, build_channel_graph(model)).params()
    target = 0.7 * json.loads(result.stdout)["steps"][0]["params"]
    assert 0.97 * target <= params <= target, f"reached {params / target:.4f} of the target"


def test_distillation_shrinks_the_unet_without_labels(cli, fashion, tmp_path):
    out, report_path = tmp_path / "unet_slim.onnx", tmp_path / "report.json"
    model = SAMPLE_MODELS / "unet.onnx"
    result = _shrink(
        cli, model, out, "50%", fashion["unlabelled"], "--steps", "3", "--report", str(report_path)
    )
    assert result.exit_code == 0, result.output
    assert "loss: distillation" in result.stderr
    assert "Layer widths" in result.stdout and "of the target" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["validation"]["final"]["accuracy"] is None
    target = 0.5 * _flops(model)
    assert 0.97 * target <= _flops(out) <= target
    y = run_model(onnx.load(out), {"input": fashion["arrays"]["x_val"][:1]})["output"]
    assert y.shape == (1, 1, 28, 28) and np.isfinite(y).all()


def _command(out, data, *extra) -> list[str]:
    return [
        sys.executable, "-m", "morphcli", "shrink", TRAINED, "-o", str(out),
        "--target-flops", "80%", "--data", data, "--epochs", "8", "--lambda", "1e-5",
        "--work-dir", str(out) + ".work", *FAST, *extra,
    ]  # fmt: skip


@pytest.fixture
def sigint_reaches_children():
    """Children start with SIGINT at its default. A shell starts a background job with SIGINT
    ignored, and an ignored signal stays ignored across exec (a handled one reverts to the
    default): a `make test &` made the interrupted shrink below ignore its Ctrl-C."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_resume_after_ctrl_c_continues_to_the_same_result(
    fashion, tmp_path, sigint_reaches_children
):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    straight = tmp_path / "straight.onnx"
    subprocess.run(_command(straight, fashion["labelled"]), env=env, check=True,
                   capture_output=True)  # fmt: skip
    out = tmp_path / "resumed.onnx"
    checkpoint = tmp_path / "resumed.onnx.work" / CHECKPOINT_NAME
    proc = subprocess.Popen(
        _command(out, fashion["labelled"]), env=env, stderr=subprocess.PIPE, text=True
    )
    interrupted = when_rewritten(proc, checkpoint, lambda: proc.send_signal(signal.SIGINT), 600)
    stderr = proc.communicate(timeout=600)[1]
    assert interrupted, f"the run ended before its first epoch checkpoint: {stderr}"
    assert proc.returncode == 130, stderr
    assert "continue with --resume" in stderr
    assert checkpoint.exists() and not out.exists()
    resumed = subprocess.run(
        _command(out, fashion["labelled"], "--resume"), env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    epoch = int(resumed.stderr.split("resuming from round 1 structure learning, epoch ")[1][0])
    assert epoch >= 2, resumed.stderr
    a, b = onnx.load(straight), onnx.load(out)
    for x, y in zip(a.graph.initializer, b.graph.initializer, strict=True):
        va, vb = onnx.numpy_helper.to_array(x), onnx.numpy_helper.to_array(y)
        assert va.shape == vb.shape and np.array_equal(va, vb), (
            f"{x.name}: max difference {np.abs(va - vb).max()}"
        )


def test_resume_without_a_checkpoint_is_a_clear_error(cli, fashion, tmp_path):
    result = _shrink(cli, TRAINED, tmp_path / "o.onnx", "50%", fashion["labelled"], "--resume")
    assert result.exit_code == 2
    assert "--resume: no checkpoint in" in result.stderr


def _bad_shape(tmp_path) -> str:
    path = tmp_path / "rgb.npz"
    np.savez(path, x=np.zeros((8, 3, 32, 32), np.float32), y=np.zeros(8, np.int64))
    return str(path)


def _bad_labels(tmp_path) -> str:
    path = tmp_path / "labels.npz"
    np.savez(path, x=np.zeros((8, 1, 28, 28), np.float32), y=np.arange(8) + 5)
    return str(path)


@pytest.mark.parametrize(
    ("target", "data", "code", "message"),
    [
        ("50%", _bad_shape, 2, "samples have shape 3x32x32, the model input takes N x 1x28x28"),
        ("50%", _bad_labels, 2, "labels out of range: found 5..12, the model's output has 10"),
        ("0", None, 2, "bad --target-flops '0': must be positive"),
        ("-5M", None, 2, "must be positive"),
        ("1k", None, 1, "is below what the pinned channels alone cost"),
    ],
)
def test_bad_input_exits_with_one_clear_line(cli, fashion, tmp_path, target, data, code, message):
    data_path = data(tmp_path) if data else fashion["labelled"]
    result = _shrink(cli, TRAINED, tmp_path / "o.onnx", target, data_path)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    # At most the data and training notes before the one error line.
    assert len(result.stderr.strip().splitlines()) <= 3, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error:"), result.stderr
    assert not (tmp_path / "o.onnx").exists()
