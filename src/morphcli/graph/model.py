"""A loaded model: its working graph, normalised, with every tensor's shape and dtype.

The working graph is an onnx-graphsurgeon ``Graph`` from load to save. Constant and
ConstantOfShape weight subgraphs become constants (a ConstantOfShape weight stays a
read-only broadcast view, so a 400 MB placeholder costs no memory); shape subgraphs
(Shape -> Gather -> Concat -> Reshape) stay computed, so surgery never freezes today's
channel counts into the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from morphcli.errors import MorphError
from morphcli.graph.load import read_model_file
from morphcli.graph.runtime import dummy_inputs, quiet_graphsurgeon, run_model
from morphcli.graph.shapes import infer_shapes, set_versions
from morphcli.graph.validate import check_dtypes, check_finite_weights, check_input_sizes
from morphcli.ops.base import Shape


@dataclass
class Model:
    """A loaded model: its working graph, every tensor's concrete shape and dtype.

    ``shapes`` hold the analysis shapes (dynamic dims fixed); the graph's own input and
    output declarations keep the user's symbolic dims so that a written model keeps them.
    A model read from a file knows its ``files`` (the ONNX file, then its external data),
    the float constants it holds as non-finite (``non_finite``: settings such as an ``inf``
    Clip bound; weights never are) and, when loaded with ``probe``, its outputs on the probe
    input (``reference``), which a result is checked against before it is written.
    """

    path: str
    graph: gs.Graph
    shapes: dict[str, Shape]
    dtypes: dict[str, np.dtype]
    input_shapes: dict[str, Shape]
    proto_info: dict = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    non_finite: frozenset[str] = frozenset()
    reference: dict[str, np.ndarray] | None = None

    def probe(self) -> dict[str, np.ndarray]:
        """The model's outputs in onnxruntime on the probe input (random, seed 0), run once
        and kept as ``reference``.

        Raises:
            MorphError: exit code 2 when onnxruntime cannot run the model.
        """
        if self.reference is None:
            proto = self.to_proto()
            try:
                self.reference = run_model(proto, dummy_inputs(proto, self.input_shapes))
            except Exception as error:  # onnxruntime raises its own exception types
                text = str(error).strip()
                message = text.splitlines()[0] if text else repr(error)
                raise MorphError(
                    f"onnxruntime cannot run the model: {message}", file=self.path
                ) from None
        return self.reference

    def input_files(self) -> dict[str, str]:
        """The files the model was read from, as messages name them (for ``OutputPlan``)."""
        return {
            path: "the input model" if i == 0 else "external data of the input model"
            for i, path in enumerate(self.files or [self.path])
        }

    def is_float(self, name: str) -> bool:
        dtype = self.dtypes.get(name)
        return dtype is not None and np.issubdtype(dtype, np.floating)

    def to_proto(self) -> onnx.ModelProto:
        """The working graph as a ModelProto with the input model's opsets and metadata."""
        proto = gs.export_onnx(self.graph, do_type_check=False)
        info = self.proto_info
        set_versions(proto, info)
        proto.producer_name = info["producer_name"]
        proto.producer_version = info["producer_version"]
        proto.domain = info["domain"]
        proto.model_version = info["model_version"]
        proto.doc_string = info["doc_string"]
        del proto.metadata_props[:]
        proto.metadata_props.extend(info["metadata_props"])
        return proto


def load_model(
    path: str | os.PathLike,
    input_shapes: dict[str, list[int]] | None = None,
    probe: bool = False,
) -> Model:
    """Load, validate, normalise and shape a model.

    Args:
        path: The ONNX file.
        input_shapes: Concrete shapes for inputs with dynamic dims. A symbolic batch dim
            becomes 1 without it; any other dynamic dim needs it. Defaults to None.
        probe: Also run it once in onnxruntime on the probe input and keep its outputs
            (``reference``), so a model onnxruntime cannot run is refused before any work
            (shrink does, before training; prune and expand probe only when a result fails
            a check, which costs nothing on a good model). Defaults to False.

    Returns:
        The Model, with every tensor's shape and dtype.

    Raises:
        MorphError: the file is missing, unreadable, invalid, unsupported, too large, has
            non-finite weights, does not run (with ``probe``), or a dynamic dim is unresolved.
    """
    read = read_model_file(path)
    model = model_from_proto(read.proto, os.fspath(path), input_shapes)
    model.files = read.files
    model.non_finite = check_finite_weights(model.graph, model.path)
    if probe:
        model.probe()
    return model


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
    check_input_sizes(fixed, {t.name: t.dtype for t in graph.inputs if t.dtype is not None}, path)
    _constants_to_initializers(graph)
    _name_nodes(graph)
    graph.toposort()
    shapes, dtypes = infer_shapes(graph, fixed, info, path)
    check_dtypes(dtypes, path)
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
