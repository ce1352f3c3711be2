"""External data, read by us and confined to the model's folder.

A tensor stored outside the ONNX file names a ``location`` relative to the model's folder,
an ``offset`` and a ``length``. Every reference is checked before any file it names is
opened: the location must be a plain relative path (not empty, not ``.``, not absolute, no
``..``) that still lies in the model's folder once symlinks are resolved, and names a regular
file whose size covers ``offset + length``, which must be the bytes the tensor's shape and type
need. Only then is the data read (by us, not by onnx's loader, so the rule does not depend on
the onnx version installed) into the tensor, which becomes an ordinary in-file tensor.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from math import prod

import onnx
from onnx import AttributeProto, TensorProto, helper

from morphcli.errors import MorphError
from morphcli.limits import check_model_size


def all_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every tensor a graph holds: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == AttributeProto.TENSOR:
                yield attribute.t
            yield from attribute.tensors
            if attribute.type == AttributeProto.GRAPH:
                yield from all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from all_tensors(subgraph)


def load_external_data(proto: onnx.ModelProto, path: str, file_size: int) -> list[str]:
    """Read every external tensor of ``proto`` into it, after checking its reference.

    Args:
        proto: The model, as parsed from ``path`` (modified in place).
        path: The ONNX file; locations are relative to its folder.
        file_size: The ONNX file's size, counted with the data against the 2 GiB limit.

    Returns:
        The data files read (real paths), in order of first use.

    Raises:
        MorphError: a reference that escapes the folder, a missing or special file, an
            offset or length outside the file or not matching the tensor, or too much data.
    """
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    files: list[str] = []
    total = file_size
    for tensor in all_tensors(proto.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        fields = {entry.key: entry.value for entry in tensor.external_data}
        where = f"external data of tensor {tensor.name!r}"
        real = _confined(fields.get("location", ""), folder, where, path)
        st = os.stat(real)
        offset = _int_field(fields, "offset", 0, where, path)
        length = _int_field(fields, "length", st.st_size - offset, where, path)
        needed = _tensor_bytes(tensor, where, path)
        if length != needed:
            raise MorphError(
                f"{where} is {length} bytes, its shape and type need {needed}", file=path
            )
        if offset + length > st.st_size:
            raise MorphError(
                f"{where} ends at byte {offset + length}, past the end of its "
                f"{st.st_size}-byte file",
                file=path,
            )
        total += length
        check_model_size(total, "the model with its external data", file=path)
        tensor.raw_data = _read(real, offset, length, where, path)
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT
        if real not in files:
            files.append(real)
    return files


def _confined(location: str, folder: str, where: str, path: str) -> str:
    """The real path of ``location``, which must stay in ``folder`` and be a regular file."""
    parts = location.replace("\\", "/").split("/")
    if not location or location in (".", "./") or "\0" in location:
        reason = "names no file"
    elif os.path.isabs(location) or location.startswith("\\"):
        reason = "is an absolute path"
    elif ".." in parts:
        reason = "climbs out with '..'"
    else:
        reason = ""
    if reason:
        raise MorphError(
            f"{where}: location {location!r} {reason}; it must be a file in the model's folder",
            file=path,
        )
    real = os.path.realpath(os.path.join(folder, location))
    if not real.startswith(folder + os.sep):
        raise MorphError(
            f"{where}: location {location!r} resolves outside the model's folder", file=path
        )
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise MorphError(f"{where}: file {location!r} is missing", file=path) from None
    except OSError as error:
        reason = f"cannot use {location!r} ({error.strerror})"
        raise MorphError(f"{where}: {reason}", file=path) from None
    if not stat.S_ISREG(st.st_mode):
        raise MorphError(f"{where}: {location!r} is not a regular file", file=path)
    return real


def _int_field(fields: dict[str, str], key: str, default: int, where: str, path: str) -> int:
    text = fields.get(key)
    try:
        value = default if text is None else int(text)
    except ValueError:
        raise MorphError(f"{where}: {key} {text!r} is not a number", file=path) from None
    if value < 0:
        raise MorphError(f"{where}: {key} {value} is negative", file=path)
    return value


def _tensor_bytes(tensor: TensorProto, where: str, path: str) -> int:
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        reason = f"unsupported element type {tensor.data_type}"
        raise MorphError(f"{where}: {reason}", file=path) from None
    if tensor.data_type == TensorProto.STRING or any(d < 0 for d in tensor.dims):
        raise MorphError(f"{where}: not a fixed-size numeric tensor", file=path)
    return prod(tensor.dims) * itemsize


def _read(real: str, offset: int, length: int, where: str, path: str) -> bytes:
    # Non-blocking and re-checked on the open file: a path swapped for a FIFO never blocks.
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MorphError(f"{where}: not a regular file", file=path)
        stream.seek(offset)
        data = stream.read(length)
    if len(data) != length:
        raise MorphError(f"{where}: the file ended early", file=path)
    return data
