"""Reading an ONNX file: the file, its external data and the onnx checker, every failure a
MorphError naming the file."""

from __future__ import annotations

import os

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from morphcli.errors import MorphError


def read_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and check an ONNX file (external data included); every failure is a MorphError."""
    path = str(path)
    if not os.path.exists(path):
        raise MorphError("no such file", file=path)
    if os.path.isdir(path):
        raise MorphError("is a directory, expected an ONNX file", file=path)
    try:
        proto = onnx.load(path, load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as error:
        raise MorphError(f"not a readable ONNX model ({type(error).__name__})", file=path) from None
    if not proto.graph.node:
        raise MorphError("not an ONNX model (no graph nodes)", file=path)
    base = os.path.dirname(os.path.abspath(path))
    for tensor in _external_tensors(proto):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if not os.path.exists(os.path.join(base, location)):
            raise MorphError(
                f"external data file {location!r} of tensor {tensor.name!r} is missing", file=path
            )
    try:
        onnx.load_external_data_for_model(proto, base)
    except (OSError, ValueError) as error:
        raise MorphError(f"cannot read external data: {error}", file=path) from None
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        first = str(error).strip().splitlines()[0]
        raise MorphError(f"invalid ONNX model: {first}", file=path) from None
    return proto


def _external_tensors(proto: onnx.ModelProto) -> list[TensorProto]:
    return [t for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL]
