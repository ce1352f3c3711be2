"""Files a run writes: the check every output path goes through, and the atomic write.

A reader never sees a half-written file: content goes to a temporary file in the target's
folder, which is then renamed over the target.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import onnx

from morphcli.errors import MorphError


def check_output_path(model_path: str, output_path: str) -> None:
    """Refuse to write over the input model or onto a directory (exit code 2)."""
    same = os.path.realpath(output_path) == os.path.realpath(model_path) or (
        os.path.exists(output_path)
        and os.path.exists(model_path)
        and os.path.samefile(output_path, model_path)
    )
    if same:
        raise MorphError(
            "-o is the input model: write the result to another file", file=output_path
        )
    if os.path.isdir(output_path):
        raise MorphError("-o is a directory: give a file name", file=output_path)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Write a file atomically: ``write(stream)`` fills a temp file in the target's folder,
    which is then renamed over the target, so a reader never sees a half-written file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_model(proto: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write a model atomically."""
    write_atomic(path, lambda stream: stream.write(proto.SerializeToString()))
