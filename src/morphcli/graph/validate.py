"""What a model must be before any work, and what a result must be before it is written.

Input checks (``load``/``model`` call them, in this order): a graph with nodes; no sparse
initializers; element types morphnet handles end to end (float32, float16 for analyze, prune
and expand, and integer or bool tensors; never bfloat16, float64, float8 or strings); sizes
within the memory limit (inputs at their fixed shapes, then weights and batch-1 activations);
finite weights. The result check: a model is written only if its weights are finite (a value
the input already held as non-finite, such as an ``inf`` Clip bound, stays allowed) and its
outputs on the probe input are finite wherever the input model's are.
"""

from __future__ import annotations

from math import prod

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

from morphcli.errors import EXIT_BUDGET, MorphError
from morphcli.graph.external import all_tensors
from morphcli.limits import check_memory
from morphcli.ops import rule_for
from morphcli.ops.base import Shape

SUPPORTED_TYPES = frozenset(
    {
        TensorProto.FLOAT,
        TensorProto.FLOAT16,
        TensorProto.BOOL,
        *(TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64),
        *(TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64),
    }
)
_TYPE_HINT = (
    "morphnet handles float32 models (float16 too for analyze, prune and expand): "
    "convert it to float32 first"
)


def type_name(elem_type: int) -> str:
    """float64, bfloat16, string ... (numpy's names where there is one)."""
    try:
        return helper.tensor_dtype_to_np_dtype(elem_type).name.replace("object", "string")
    except (KeyError, TypeError, ValueError):
        pass
    try:
        return TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"element type {elem_type}"


def check_proto(proto: onnx.ModelProto, path: str) -> None:
    """Refuse what no later stage handles, before anything is read or built from it."""
    if not proto.graph.node:
        raise MorphError("not an ONNX model (no graph nodes)", file=path)
    if _has_sparse(proto.graph):
        raise MorphError(
            "sparse initializers are not supported: store them as dense tensors", file=path
        )
    values = [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]
    for value in values:
        if not value.type.HasField("tensor_type"):
            raise MorphError(
                f"{value.name!r} is not a tensor (sequences and maps are not supported)",
                file=path,
            )
        _check_type(value.name, value.type.tensor_type.elem_type, path)
    for tensor in all_tensors(proto.graph):
        _check_type(tensor.name, tensor.data_type, path)


def _has_sparse(graph: onnx.GraphProto) -> bool:
    if graph.sparse_initializer:
        return True
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("sparse_tensor") or attribute.sparse_tensors:
                return True
            subgraphs = [attribute.g] if attribute.HasField("g") else []
            if any(_has_sparse(g) for g in [*subgraphs, *attribute.graphs]):
                return True
    return False


def _check_type(name: str, elem_type: int, path: str) -> None:
    if elem_type != TensorProto.UNDEFINED and elem_type not in SUPPORTED_TYPES:
        raise MorphError(f"tensor {name!r} is {type_name(elem_type)}: {_TYPE_HINT}", file=path)


def check_dtypes(dtypes: dict[str, np.dtype], path: str) -> None:
    """Every tensor's type, as shape inference found it (casts inside the graph included)."""
    for name, dtype in dtypes.items():
        try:
            elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        except (KeyError, TypeError, ValueError):
            raise MorphError(f"tensor {name!r} is {dtype}: {_TYPE_HINT}", file=path) from None
        _check_type(name, elem_type, path)


def check_input_sizes(shapes: dict[str, Shape], dtypes: dict[str, np.dtype], path: str) -> None:
    """Each graph input at its fixed shape fits the memory limit (before anything is built)."""
    for name, shape in shapes.items():
        itemsize = np.dtype(dtypes.get(name, np.float32)).itemsize
        shown = "x".join(str(d) for d in shape)
        check_memory(prod(shape) * itemsize, f"the input {name!r} of shape {shown}", file=path)


def check_model_memory(
    graph: gs.Graph, shapes: dict[str, Shape], dtypes: dict[str, np.dtype], path: str
) -> None:
    """Weights plus every activation at batch 1 fit the memory limit (before any run)."""
    total = 0
    for name, tensor in graph.tensors().items():
        if isinstance(tensor, gs.Constant):
            total += prod(tensor.shape) * np.dtype(tensor.dtype).itemsize
        elif name in shapes:
            total += prod(shapes[name]) * np.dtype(dtypes.get(name, np.float32)).itemsize
    check_memory(total, "the model's weights and activations at batch 1", file=path)


def weights(graph: gs.Graph) -> list[gs.Constant]:
    """The float constants that are weights or running statistics (not settings such as Clip
    bounds or Resize scales): those an op rule trains or updates."""
    found: dict[str, gs.Constant] = {}
    for node in graph.nodes:
        rule = rule_for(node.op, node.domain)
        if rule is None:
            continue
        state = rule.state_inputs(node)
        for index, tensor in enumerate(node.inputs):
            if (
                isinstance(tensor, gs.Constant)
                and np.issubdtype(np.dtype(tensor.dtype), np.floating)
                and (index in state or rule.trainable_input(node, index))
            ):
                found[tensor.name] = tensor
    return list(found.values())


def _finite(values: np.ndarray) -> bool:
    """Whether every value is finite; a broadcast view is read once, not once per copy."""
    values = np.asarray(values)
    index = tuple(slice(0, 1) if s == 0 else slice(None) for s in values.strides)
    return bool(np.isfinite(values[index]).all())


def check_finite_weights(graph: gs.Graph, path: str) -> frozenset[str]:
    """Refuse a model whose weights hold NaN or Inf; return the other float constants that
    do (settings such as an ``inf`` Clip bound), which a result may keep."""
    trained = {t.name for t in weights(graph)}
    settings = set()
    for name, tensor in graph.tensors().items():
        if not isinstance(tensor, gs.Constant):
            continue
        if not np.issubdtype(np.dtype(tensor.dtype), np.floating) or _finite(tensor.values):
            continue
        if name in trained:
            raise MorphError(f"weight {name!r} holds NaN or Inf: the model is broken", file=path)
        settings.add(name)
    return frozenset(settings)


def check_finite_result(
    proto: onnx.ModelProto,
    outputs: dict[str, np.ndarray],
    allowed: frozenset[str],
    reference: dict[str, np.ndarray] | None,
    path: str,
) -> None:
    """Refuse (exit 1) a result with non-finite weights, or with non-finite outputs on the
    probe input where the input model's (``reference``, when known) are finite.

    Args:
        proto: The result.
        outputs: Its outputs on the probe input (``runtime.dummy_inputs`` with seed 0).
        allowed: Constants the input model already held as non-finite (settings).
        reference: The input model's outputs on the same input, or None.
        path: The input model, for messages.
    """
    for tensor in proto.graph.initializer:
        if tensor.name in allowed or tensor.data_type not in (
            TensorProto.FLOAT,
            TensorProto.FLOAT16,
        ):
            continue
        if not _finite(onnx.numpy_helper.to_array(tensor)):
            raise MorphError(
                f"the result's weight {tensor.name!r} holds NaN or Inf: nothing was written",
                file=path,
                exit_code=EXIT_BUDGET,
            )
    for name, value in outputs.items():
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            continue
        finite = np.isfinite(value)
        if reference and name in reference and np.shape(reference[name]) == value.shape:
            finite |= ~np.isfinite(reference[name])
        if not finite.all():
            raise MorphError(
                f"the result's output {name!r} is NaN or Inf on a probe input where the input "
                "model's is finite: nothing was written",
                file=path,
                exit_code=EXIT_BUDGET,
            )
