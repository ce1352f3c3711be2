"""``torchrun --nproc-per-node 2 -m morphcli shrink`` on CPU (gloo): the target met, one output
written once by rank 0, the result of one process on the same data, and a resume after both
processes are killed (at the first epoch checkpoint) that ends bit for bit where the
uninterrupted run does.

Tolerance against one process: with ``--sync-bn`` the two processes take the single
process's steps up to float rounding (each normalises over the whole global batch, and DDP
averages the two halves' gradients). Rounding differences grow where the penalty holds BN
scales around zero, as between two single-process runs with different ``--threads``, so an
alive count can differ where a channel ends within a few 1e-3 of the threshold. The settings
here (lambda 3e-6, lr 0.003, 30 steps) keep every channel far from it: the widths must be
equal, the weights within WEIGHT_TOLERANCE.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from morphcli.cli import main
from morphcli.learn.checkpoint import CHECKPOINT_NAME
from tests.conftest import ROOT, SAMPLE_MODELS, run_env, torchrun, torchrun_command
from tests.shrink.checkpoints import when_rewritten

TRAINED = str(SAMPLE_MODELS / "resnet_fashion_trained.onnx")
SETTINGS = [
    "--target-flops", "60%", "--steps", "30", "--lambda", "3e-6", "--lr", "0.003",
    "--batch-size", "32", "--threads", "1", "--finetune-epochs", "1", "--sync-bn",
]  # fmt: skip
WEIGHT_TOLERANCE = 1e-3
AUDIT = ROOT / "tests" / "shrink" / "audit"


def _weights(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def _shrink_args(data: str, out: Path, *extra: str) -> list[str]:
    return [
        "shrink", TRAINED, "-o", str(out), "--data", data, "--report", f"{out}.json",
        "--work-dir", f"{out}.work", *SETTINGS, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def two_processes(fashion, tmp_path_factory):
    """One uninterrupted 2-process run, each process's writes into its folder logged."""
    out = tmp_path_factory.mktemp("two") / "slim.onnx"
    log = out.parent.parent / f"{out.parent.name}-writes.log"
    env = run_env()
    env.update(
        PYTHONPATH=os.pathsep.join([str(AUDIT), env["PYTHONPATH"]]),
        MORPHCLI_AUDIT_DIR=str(out.parent), MORPHCLI_AUDIT_LOG=str(log),
    )  # fmt: skip
    result = subprocess.run(
        torchrun_command("-m", "morphcli", *_shrink_args(fashion["labelled"], out)),
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return {"out": out, "log": log, "stderr": result.stderr}


def test_two_processes_match_one_process_and_only_rank_0_writes(
    cli, fashion, two_processes, tmp_path
):
    one = tmp_path / "slim.onnx"
    single = cli.invoke(main, _shrink_args(fashion["labelled"], one))
    assert single.exit_code == 0, single.output
    two = two_processes["out"]
    report, reference = (
        json.loads(Path(f"{two}.json").read_text()),
        json.loads(Path(f"{one}.json").read_text()),
    )
    assert report["met"] and report["training"]["world_size"] == 2
    assert report["training"]["sync_bn"] and report["throughput"]["round 1 learn"]["images"] == 960
    # Every process took the same surgery decisions (the run compares them), and those of
    # the single process.
    assert [s["widths"] for s in report["steps"]] == [s["widths"] for s in reference["steps"]]
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    worst = max((float(np.abs(a[k] - b[k]).max()), k) for k in a)
    assert worst[0] < WEIGHT_TOLERANCE, f"largest weight difference from one process: {worst}"
    # Only rank 0 writes: the checkpoints, the model (renamed into place once) and the report.
    events = [line.split(" ", 2) for line in two_processes["log"].read_text().splitlines()]
    assert {rank for rank, _, _ in events} == {"0"}, events
    renamed = [path for _, event, path in events if event == "rename"]
    assert renamed.count(str(two)) == 1 and renamed.count(f"{two}.json") == 1, renamed
    stderr = two_processes["stderr"]
    assert stderr.count("fine-tune epoch 1/1") == 1, stderr
    assert "training: 2 processes on cpu (gloo), fp32" in stderr


def _kill_workers(launcher: int) -> list[int]:
    """SIGKILL the launcher's worker processes (its children); their pids."""
    with open(f"/proc/{launcher}/task/{launcher}/children") as stream:
        workers = [int(child) for child in stream.read().split()]
    for worker in workers:
        os.kill(worker, signal.SIGKILL)
    return workers


def test_resume_under_torchrun_after_killing_both_processes(fashion, two_processes, tmp_path):
    out = tmp_path / "slim.onnx"
    checkpoint = Path(f"{out}.work") / CHECKPOINT_NAME
    launcher = subprocess.Popen(
        torchrun_command("-m", "morphcli", *_shrink_args(fashion["labelled"], out)),
        env=run_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    killed: list[int] = []
    try:
        when_rewritten(
            launcher, checkpoint, lambda: killed.extend(_kill_workers(launcher.pid)), 240
        )
        stderr = launcher.communicate(timeout=120)[1]
    finally:
        if launcher.poll() is None:  # a failed assertion: leave no processes behind
            _kill_workers(launcher.pid)
            launcher.kill()
    assert len(killed) == 2, f"the run ended before its first epoch checkpoint: {stderr[-2000:]}"
    assert launcher.returncode != 0 and checkpoint.exists() and not out.exists()
    resumed = torchrun("-m", "morphcli", *_shrink_args(fashion["labelled"], out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    epoch = int(resumed.stderr.split("resuming from round 1 structure learning, epoch ")[1][0])
    assert epoch >= 2, resumed.stderr
    a, b = _weights(two_processes["out"]), _weights(out)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape and np.array_equal(a[name], b[name]), (
            f"{name}: max difference {np.abs(a[name] - b[name]).max()}"
        )
