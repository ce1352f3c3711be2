"""Where a shrink run stands, saved after every epoch so that ``--resume`` continues from it.

The state holds the current model (structure and weights, as ONNX bytes), the optimizer's
state, lambda, the report so far and the phase, round and next epoch. It is written
atomically (a temp file renamed over the old one), so an interruption at any moment leaves
the previous complete checkpoint. A fingerprint of the run's inputs (model file, target,
data) guards against resuming a different run.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
import torch

from morphcli.errors import MorphError
from morphcli.outputs import write_atomic

CHECKPOINT_NAME = "checkpoint.pt"
LEARN, FINETUNE, BASELINE, DONE = "learn", "finetune", "baseline", "done"


@dataclass
class ShrinkState:
    """A run's position: ``phase`` (learn, finetune, or baseline: fine-tuning the uniform
    baseline), 1-based ``round``, the next ``epoch`` to run in the phase, and what training
    needs to continue (``scales``: the penalty's group scales, fixed when its phase began;
    ``round_start``: the model the learning round began with); ``result`` holds the
    fine-tuned MorphNet model while the baseline trains."""

    phase: str
    round: int
    epoch: int
    proto: bytes
    report: dict[str, Any]
    optimizer: dict | None = None
    strength: dict | None = None
    result: bytes | None = None
    scales: list[float] | None = None
    round_start: bytes | None = None

    def __str__(self) -> str:
        where = {
            LEARN: f"round {self.round} structure learning",
            FINETUNE: "fine-tuning",
            BASELINE: "fine-tuning the uniform baseline",
            DONE: "writing the result",
        }[self.phase]
        return f"{where}, epoch {self.epoch + 1}"


def default_work_dir(output: str) -> str:
    """``OUTPUT.work`` beside the output; when that name would be too long for the file
    system (255 bytes), the output's name is shortened and a hash of it added."""
    folder, name = os.path.split(output)
    work = f"{name}.work"
    if len(os.fsencode(work)) > 255:
        digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
        short = os.fsencode(name)[:200].decode("utf-8", "ignore")
        work = f"{short}-{digest}.work"
    return os.path.join(folder, work)


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_state(
    work_dir: str | os.PathLike, fingerprint: dict[str, Any], state: ShrinkState
) -> None:
    """Write the checkpoint atomically into ``work_dir`` (created if needed)."""
    content = {"fingerprint": fingerprint, "state": asdict(state)}
    Path(work_dir).mkdir(exist_ok=True)
    write_atomic(Path(work_dir) / CHECKPOINT_NAME, lambda stream: torch.save(content, stream))


def load_state(work_dir: str | os.PathLike, fingerprint: dict[str, Any]) -> ShrinkState:
    """The checkpoint in ``work_dir``; it must have been written by a run with ``fingerprint``.

    Raises:
        MorphError: no checkpoint, an unreadable one, or one of a different run.
    """
    path = Path(work_dir) / CHECKPOINT_NAME
    if not path.exists():
        raise MorphError(f"--resume: no checkpoint in {work_dir}")
    try:
        # Tensors and plain values only: a checkpoint is a file, and unpickling arbitrary
        # objects from a file runs whatever code it names.
        saved = torch.load(path, weights_only=True)
        differs = [k for k in fingerprint if saved["fingerprint"].get(k) != fingerprint[k]]
        state = ShrinkState(**saved["state"])
        onnx.ModelProto.FromString(state.proto)
    except pickle.UnpicklingError:
        raise MorphError(
            "--resume: the checkpoint holds objects other than tensors and plain values: refused",
            file=str(path),
        ) from None
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MorphError(f"--resume: unreadable checkpoint ({reason})", file=str(path)) from None
    if differs:
        raise MorphError(
            f"--resume: the checkpoint belongs to another run ({', '.join(differs)} differ)",
            file=str(path),
        )
    return state
