"""Every tensor's concrete shape and dtype: onnx shape inference on a light copy of the graph
(big constants declared as typed inputs), then one onnxruntime run for what is still missing
(shapes computed at run time)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from morphcli.errors import MorphError
from morphcli.graph.runtime import dummy_inputs, run_model
from morphcli.graph.validate import check_model_memory
from morphcli.ops.base import Shape

# Constants larger than this are declared as typed inputs, not copied, for shape inference.
_LARGE_CONSTANT_BYTES = 1 << 20
# IR < 4 requires every initializer to be listed as a graph input too; graphsurgeon does not
# list them, so exported models use at least IR 4 (the opsets stay the user's).
_MIN_IR_VERSION = 4


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
    set_versions(proto, info)
    return proto


def set_versions(proto: onnx.ModelProto, info: dict) -> None:
    proto.ir_version = max(info["ir_version"], _MIN_IR_VERSION)
    del proto.opset_import[:]
    proto.opset_import.extend(info["opset_import"])


def infer_shapes(
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
    inferred, inference_failed = _infer(proto)
    for value in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type:
            dtypes.setdefault(value.name, helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
            if all(d >= 0 for d in dims):
                shapes.setdefault(value.name, tuple(dims))
    used = {t.name for t in graph.outputs}
    read = [
        t.name
        for node in graph.nodes
        for t in node.outputs
        if t.name and (t.outputs or t.name in used)
    ]
    # After a failed strict inference onnxruntime has the last word: every shape is read
    # off a run, and only what it cannot run is refused.
    missing = read if inference_failed else [name for name in read if name not in shapes]
    check_model_memory(graph, shapes, dtypes, path)
    if missing:
        run_shapes, run_dtypes = _shapes_by_running(graph, fixed, info, missing, path)
        shapes.update(run_shapes)
        for name, dtype in run_dtypes.items():
            dtypes.setdefault(name, dtype)
    for tensor in graph.tensors().values():
        if tensor.dtype is not None and tensor.name not in dtypes:
            dtypes[tensor.name] = np.dtype(tensor.dtype)
    return shapes, dtypes


def _infer(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """onnx shape inference, strict first; (the inferred model, whether strict failed)."""
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True), False
    except Exception:  # InferenceError, and checker errors for some malformed graphs
        pass
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True), True
    except Exception:
        return proto, True


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
    set_versions(proto, info)
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
