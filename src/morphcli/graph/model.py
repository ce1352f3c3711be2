"""Load, validate and normalise an ONNX model, fix its dynamic dims and find every shape.

The working graph is an onnx-graphsurgeon ``Graph`` from load to save. Constant and
ConstantOfShape weight subgraphs become constants (a ConstantOfShape weight stays a
read-only broadcast view, so a 400 MB placeholder costs no memory); shape subgraphs
(Shape -> Gather -> Concat -> Reshape) stay computed, so surgery never freezes today's
channel counts into the model.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

from morphcli.errors import MorphError
from morphcli.ops.base import Shape
from morphcli.runtime import quiet_graphsurgeon, run_model

# Constants larger than this are declared as typed inputs, not copied, for shape inference.
_LARGE_CONSTANT_BYTES = 1 << 20
# IR < 4 requires every initializer to be listed as a graph input too; graphsurgeon does not
# list them, so exported models use at least IR 4 (the opsets stay the user's).
_MIN_IR_VERSION = 4


@dataclass
class Model:
    """A loaded model: its working graph, every tensor's concrete shape and dtype.

    ``shapes`` hold the analysis shapes (dynamic dims fixed); the graph's own input and
    output declarations keep the user's symbolic dims so that a written model keeps them.
    """

    path: str
    graph: gs.Graph
    shapes: dict[str, Shape]
    dtypes: dict[str, np.dtype]
    input_shapes: dict[str, Shape]
    proto_info: dict = field(default_factory=dict)

    def is_float(self, name: str) -> bool:
        dtype = self.dtypes.get(name)
        return dtype is not None and np.issubdtype(dtype, np.floating)

    def to_proto(self) -> onnx.ModelProto:
        """The working graph as a ModelProto with the input model's opsets and metadata."""
        proto = gs.export_onnx(self.graph, do_type_check=False)
        info = self.proto_info
        _set_versions(proto, info)
        proto.producer_name = info["producer_name"]
        proto.producer_version = info["producer_version"]
        proto.domain = info["domain"]
        proto.model_version = info["model_version"]
        proto.doc_string = info["doc_string"]
        del proto.metadata_props[:]
        proto.metadata_props.extend(info["metadata_props"])
        return proto


def parse_shape(text: str) -> list[int]:
    """``1x3x224x224`` (or ``1,3,224,224``) as a list of positive ints."""
    parts = text.replace(",", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise MorphError(f"bad shape {text!r}: expected dims like 1x3x224x224") from None
    if not dims or any(d <= 0 for d in dims):
        raise MorphError(f"bad shape {text!r}: every dim must be a positive integer")
    return dims


def parse_input_shape(text: str) -> tuple[str, list[int]]:
    """``NAME=1x3x224x224`` as (name, dims); the flag value of ``--input-shape``."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name:
        raise MorphError(f"bad --input-shape {text!r}: expected NAME=1x3x224x224")
    return name, parse_shape(dims)


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


def load_model(path: str | os.PathLike, input_shapes: dict[str, list[int]] | None = None) -> Model:
    """Load, validate, normalise and shape a model.

    Args:
        path: The ONNX file.
        input_shapes: Concrete shapes for inputs with dynamic dims. A symbolic batch dim
            becomes 1 without it; any other dynamic dim needs it. Defaults to None.

    Returns:
        The Model, with every tensor's shape and dtype.

    Raises:
        MorphError: the file is missing, unreadable, invalid, or a dynamic dim is unresolved.
    """
    proto = read_proto(path)
    return model_from_proto(proto, str(path), input_shapes)


def model_from_proto(
    proto: onnx.ModelProto, path: str, input_shapes: dict[str, list[int]] | None = None
) -> Model:
    """Like ``load_model`` for a ModelProto already in memory (``path`` names it in errors)."""
    info = {
        "ir_version": proto.ir_version,
        "opset_import": list(proto.opset_import),
        "producer_name": proto.producer_name,
        "producer_version": proto.producer_version,
        "domain": proto.domain,
        "model_version": proto.model_version,
        "doc_string": proto.doc_string,
        "metadata_props": list(proto.metadata_props),
    }
    quiet_graphsurgeon()
    graph = gs.import_onnx(proto)
    fixed = _fix_input_shapes(graph, input_shapes or {}, path)
    _constants_to_initializers(graph)
    _name_nodes(graph)
    graph.toposort()
    shapes, dtypes = _infer_shapes(graph, fixed, info, path)
    return Model(path, graph, shapes, dtypes, fixed, info)


def _fix_input_shapes(graph: gs.Graph, given: dict[str, list[int]], path: str) -> dict[str, Shape]:
    names = [t.name for t in graph.inputs]
    for name in given:
        if name not in names:
            raise MorphError(
                f"--input-shape names {name!r}, which is not an input (inputs: {', '.join(names)})",
                file=path,
            )
    fixed: dict[str, Shape] = {}
    for tensor in graph.inputs:
        declared = list(tensor.shape) if tensor.shape is not None else None
        if tensor.name in given:
            dims = given[tensor.name]
            if declared is not None and len(declared) != len(dims):
                raise MorphError(
                    f"--input-shape {tensor.name}: rank {len(dims)} given, the model declares "
                    f"rank {len(declared)}",
                    file=path,
                )
            for i, (want, have) in enumerate(zip(declared or [], dims, strict=False)):
                if isinstance(want, int) and want > 0 and want != have:
                    raise MorphError(
                        f"--input-shape {tensor.name}: dim {i} is {have}, the model fixes it "
                        f"to {want}",
                        file=path,
                    )
            fixed[tensor.name] = tuple(dims)
            continue
        if declared is None:
            raise MorphError(
                f"input {tensor.name!r} has no declared shape: give it with "
                f"--input-shape {tensor.name}=1x3x224x224",
                file=path,
            )
        dims = []
        for i, dim in enumerate(declared):
            if isinstance(dim, int) and dim > 0:
                dims.append(dim)
            elif i == 0:
                dims.append(1)
            else:
                shown = "x".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in declared)
                raise MorphError(
                    f"input {tensor.name!r} has a dynamic dim {i} ({shown}): give its size "
                    f"with --input-shape {tensor.name}=...",
                    file=path,
                )
        fixed[tensor.name] = tuple(dims)
    return fixed


def _constants_to_initializers(graph: gs.Graph) -> None:
    """Constant nodes and ConstantOfShape of a constant shape become constants, then fold."""
    for node in graph.nodes:
        if node.op == "Constant" and not node.inputs:
            value = _constant_node_value(node)
            if value is not None:
                node.outputs[0].to_constant(value)
                node.outputs.clear()
        elif node.op == "ConstantOfShape" and isinstance(node.inputs[0], gs.Constant):
            shape = tuple(int(d) for d in np.asarray(node.inputs[0].values).reshape(-1))
            fill = node.attrs.get("value")
            fill = (
                np.asarray(fill.values).reshape(-1)[:1]
                if fill is not None
                else np.zeros(1, np.float32)
            )
            node.outputs[0].to_constant(np.broadcast_to(fill.reshape(()), shape))
            node.outputs.clear()
    graph.cleanup()
    graph.fold_constants(fold_shapes=False, error_ok=True)
    graph.cleanup()


def _name_nodes(graph: gs.Graph) -> None:
    """Give unnamed or duplicate-named nodes unique names, so reports and errors can cite them."""
    seen: set[str] = set()
    for index, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            base = node.name or f"{node.op}_{index}"
            name, suffix = base, 1
            while name in seen:
                name, suffix = f"{base}_{suffix}", suffix + 1
            node.name = name
        seen.add(node.name)


def _constant_node_value(node: gs.Node) -> np.ndarray | None:
    attrs = node.attrs
    if "value" in attrs:
        value = attrs["value"]
        return np.asarray(value.values if isinstance(value, gs.Constant) else value)
    for key, dtype in (
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    return None


def shape_proto(graph: gs.Graph, fixed: dict[str, Shape], info: dict) -> onnx.ModelProto:
    """A light copy of the graph for shape inference: big constants become typed inputs."""
    light = graph.copy()
    for tensor in list(light.tensors().values()):
        if isinstance(tensor, gs.Constant) and tensor.values.nbytes > _LARGE_CONSTANT_BYTES:
            dtype, shape = tensor.dtype, tuple(tensor.shape)
            tensor.to_variable(dtype=dtype, shape=shape)
            tensor.type = "tensor_type"  # to_variable leaves it unset; the exporter reads it
            light.inputs.append(tensor)
    for tensor in light.inputs:
        if tensor.name in fixed:
            tensor.shape = list(fixed[tensor.name])
    for tensor in light.outputs:
        tensor.shape = None
    for tensor in light.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor not in light.inputs:
            tensor.shape = None
    proto = gs.export_onnx(light, do_type_check=False)
    _set_versions(proto, info)
    return proto


def _set_versions(proto: onnx.ModelProto, info: dict) -> None:
    proto.ir_version = max(info["ir_version"], _MIN_IR_VERSION)
    del proto.opset_import[:]
    proto.opset_import.extend(info["opset_import"])


def _infer_shapes(
    graph: gs.Graph, fixed: dict[str, Shape], info: dict, path: str
) -> tuple[dict[str, Shape], dict[str, np.dtype]]:
    shapes: dict[str, Shape] = {}
    dtypes: dict[str, np.dtype] = {}
    for name, tensor in graph.tensors().items():
        if isinstance(tensor, gs.Constant):
            shapes[name] = tuple(int(d) for d in tensor.shape)
            dtypes[name] = np.dtype(tensor.dtype)
    shapes.update(fixed)
    proto = shape_proto(graph, fixed, info)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception:
        inferred = proto
    for value in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type:
            dtypes.setdefault(value.name, helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
            if all(d >= 0 for d in dims):
                shapes.setdefault(value.name, tuple(dims))
    used = {t.name for t in graph.outputs}
    missing = [
        t.name
        for node in graph.nodes
        for t in node.outputs
        if t.name and t.name not in shapes and (t.outputs or t.name in used)
    ]
    if missing:
        run_shapes, run_dtypes = _shapes_by_running(graph, fixed, info, missing, path)
        shapes.update(run_shapes)
        for name, dtype in run_dtypes.items():
            dtypes.setdefault(name, dtype)
    for tensor in graph.tensors().values():
        if tensor.dtype is not None and tensor.name not in dtypes:
            dtypes[tensor.name] = np.dtype(tensor.dtype)
    return shapes, dtypes


def _shapes_by_running(
    graph: gs.Graph, fixed: dict[str, Shape], info: dict, names: list[str], path: str
) -> tuple[dict[str, Shape], dict[str, np.dtype]]:
    """Shapes shape inference could not find, read off one onnxruntime run on a dummy input."""
    probe = graph.copy()
    tensors = probe.tensors()
    probe.outputs = [tensors[n] for n in names if n in tensors]
    for tensor in probe.outputs:
        tensor.dtype, tensor.shape = None, None
    for tensor in probe.inputs:
        tensor.shape = list(fixed[tensor.name])
    proto = gs.export_onnx(probe, do_type_check=False)
    _set_versions(proto, info)
    feeds = dummy_inputs(proto, fixed)
    try:
        outputs = run_model(proto, feeds)
    except Exception as error:
        message = str(error).strip().splitlines()[0]
        raise MorphError(
            f"onnxruntime cannot run the model to find shapes: {message}", file=path
        ) from None
    shapes = {n: tuple(int(d) for d in np.shape(v)) for n, v in outputs.items()}
    dtypes = {n: np.asarray(v).dtype for n, v in outputs.items()}
    return shapes, dtypes


def dummy_inputs(
    proto: onnx.ModelProto, shapes: dict[str, Shape], seed: int = 0
) -> dict[str, np.ndarray]:
    """Random inputs of the given shapes and the declared dtypes (ints are small and >= 0)."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in proto.graph.initializer}
    feeds = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        shape = shapes[value.name]
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[value.name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


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
