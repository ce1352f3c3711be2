"""A CI job cancelled mid-run (SIGTERM) stops shrink as Ctrl-C does: exit 130, no output,
no temporary file, the last checkpoint kept for ``--resume``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np

from morphcli.learn.checkpoint import CHECKPOINT_NAME
from morphcli.outputs import TEMP_PREFIX
from tests.conftest import ROOT
from tests.hostile.models import tiny_data, tiny_model
from tests.shrink.checkpoints import when_rewritten


def test_sigterm_keeps_the_checkpoint_and_leaves_no_temporary(tmp_path):
    (tmp_path / "model.onnx").write_bytes(tiny_model().SerializeToString())
    np.savez(tmp_path / "data.npz", **tiny_data())
    argv = [
        sys.executable, "-m", "morphcli", "shrink", "model.onnx", "-o", "out.onnx",
        "--target-flops", "50%", "--data", "data.npz", "--epochs", "500", "--batch-size", "8",
        "--threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    checkpoint = tmp_path / "out.onnx.work" / CHECKPOINT_NAME
    when_rewritten(proc, checkpoint, lambda: proc.send_signal(signal.SIGTERM), 300)
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: the last checkpoint is in")
    assert checkpoint.exists() and not (tmp_path / "out.onnx").exists()
    left = [p.name for p in tmp_path.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert left == []
