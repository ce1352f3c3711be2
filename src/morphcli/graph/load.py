"""Reading an ONNX file, trusting nothing: every failure is a MorphError naming the file.

The path is checked with ``stat`` before it is opened: it must be a regular file (a FIFO, a
device such as /dev/zero or a folder is refused, so nothing blocks or reads forever) no larger
than the memory limit and the 2 GiB one protobuf holds. The bytes are parsed, the model is
checked for what no later stage handles (``validate.check_proto``), its external data is
checked and read by us (``external``), then ``onnx.checker`` judges it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import onnx

from morphcli.errors import MorphError
from morphcli.graph.external import load_external_data
from morphcli.graph.validate import check_proto
from morphcli.limits import check_model_size


@dataclass
class ModelFile:
    """A parsed and checked model, and every file it was read from (the ONNX file first)."""

    proto: onnx.ModelProto
    files: list[str]


def read_model_file(path: str | os.PathLike) -> ModelFile:
    """Read and check an ONNX file and its external data.

    Raises:
        MorphError: exit code 2 for anything that is not a readable, valid, supported model.
    """
    path = os.fspath(path)
    size = _regular_size(path)
    check_model_size(size, "the model file", file=path)
    data = _read(path, size)
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as error:  # protobuf's decoder reports garbage in several ways
        raise MorphError(f"not a readable ONNX model ({type(error).__name__})", file=path) from None
    del data
    check_proto(proto, path)
    files = [os.path.realpath(path), *load_external_data(proto, path, size)]
    try:
        onnx.checker.check_model(proto)
    except Exception as error:  # ValidationError, and ValueError for some malformed fields
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MorphError(f"invalid ONNX model: {first}", file=path) from None
    return ModelFile(proto, files)


def read_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """``read_model_file(path).proto``."""
    return read_model_file(path).proto


def _regular_size(path: str) -> int:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise MorphError("no such file", file=path) from None
    except OSError as error:
        raise MorphError(f"cannot read it ({error.strerror})", file=path) from None
    except ValueError as error:
        raise MorphError(f"not a usable path ({error})", file=path) from None
    if stat.S_ISDIR(st.st_mode):
        raise MorphError("is a directory, expected an ONNX file", file=path)
    if not stat.S_ISREG(st.st_mode):
        raise MorphError("is a device, pipe or other special file, not an ONNX file", file=path)
    return st.st_size


def _read(path: str, size: int) -> bytes:
    """The file's bytes, opened without blocking and checked again on the open file (the
    path may have been swapped for a FIFO since ``stat``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise MorphError(f"cannot read it ({error.strerror})", file=path) from None
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MorphError("is not a regular file", file=path)
        data = stream.read(size + 1)
    if len(data) > size:
        raise MorphError("the file grew while it was read", file=path)
    return data
