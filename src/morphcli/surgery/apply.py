"""Surgery: one function that removes, keeps and replicates channels of a graph.

Copy counts per group give every tensor an index map (``index_maps``). Constants that follow
a tensor's channels (``Follow``) are taken along that axis by the tensor's index map; a linear
consumer's input axis (role ``in``) is divided by the copy count, so a widened model computes
the same function (Net2WiderNet, arXiv 1511.05641). Attributes and shape-like inputs are then
rewritten by each node's op rule (``rewrite``). The result passes ``onnx.checker`` (full
check) and runs in onnxruntime, or the surgery fails with an internal error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from morphcli.errors import EXIT_INTERNAL, MorphError
from morphcli.graph.channels import FILTER, IN, ChannelGraph
from morphcli.graph.model import Model
from morphcli.graph.runtime import dummy_inputs, run_model
from morphcli.graph.validate import check_finite_result
from morphcli.ops import rule_for
from morphcli.ops.base import Shape
from morphcli.surgery.index_maps import IndexMap, index_maps

PRESERVE, RANDOM = "preserve", "random"


@dataclass(frozen=True)
class Init:
    """How new channels start.

    ``preserve``: replicas copy their class everywhere and consumers' input columns are
    divided by the copy count, so the function is unchanged. ``noise`` > 0 adds to those
    columns a perturbation of standard deviation ``noise * std(weight)`` that sums to zero
    over the copies of each channel: the function is still unchanged (replicas carry equal
    values), but replicas get different gradients, which breaks their symmetry.
    ``random``: replicas' producing filters are drawn from a normal distribution with the
    standard deviation of the existing filters, and consumers read them with zero columns
    (the originals keep their full columns): the function is unchanged at init and the new
    channels start learning from the first step. Per-channel parameters (bias, BN) are copied.
    """

    mode: str = PRESERVE
    noise: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in (PRESERVE, RANDOM):
            raise ValueError(f"init mode must be {PRESERVE} or {RANDOM}, not {self.mode!r}")
        if self.noise < 0:
            raise ValueError("noise must be >= 0")


class RewriteContext:
    """What an op rule's ``rewrite`` sees: old and new channels of every tensor, the old
    shapes, and ways to replace a constant input or add a node without touching others."""

    def __init__(self, model: Model, cg: ChannelGraph, maps: dict[str, IndexMap], graph: gs.Graph):
        self.model = model
        self.cg = cg
        self.maps = maps
        self.graph = graph
        self._names = set(graph.tensors()) | {n.name for n in graph.nodes}

    @property
    def opset(self) -> int:
        return int(self.graph.opset)

    def shape(self, name: str) -> Shape | None:
        """The tensor's shape before surgery."""
        return self.model.shapes.get(name)

    def const(self, tensor: gs.Tensor | None) -> np.ndarray | None:
        return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None

    def axis(self, name: str) -> int | None:
        channels = self.cg.tensors.get(name)
        return None if channels is None else channels.axis

    def index_map(self, name: str) -> IndexMap | None:
        return self.maps.get(name)

    def changed(self, name: str) -> bool:
        found = self.maps.get(name)
        return found is not None and found.changed

    def old_count(self, name: str) -> int | None:
        found = self.maps.get(name)
        return None if found is None else found.old_count

    def new_count(self, name: str) -> int | None:
        found = self.maps.get(name)
        return None if found is None else found.new_count

    def segment(self, source: str, part: str, old_start: int) -> tuple[int, int]:
        """Where ``part`` (old channels ``old_start`` ... of ``source``) lies in new ``source``.

        Raises:
            ValueError: the part's new channels are not a contiguous block of the source's
                (a replicated run straddles the part's boundary).
        """
        src, sub = self.maps[source], self.maps[part]
        start = int(src.old_copies[:old_start].sum())
        end = start + sub.new_count
        if not np.array_equal(src.old_index[start:end], sub.old_index + old_start):
            raise ValueError(f"{part} is not a contiguous block of {source} after surgery")
        return start, end

    def new_position(self, name: str, old: int, replica: int) -> int:
        """The new channel of ``name`` that is copy ``replica`` of old channel ``old``."""
        found = self.maps[name]
        hits = np.flatnonzero((found.old_index == old) & (found.replica == replica))
        return int(hits[0])

    def fresh_name(self, base: str) -> str:
        name, i = base, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def set_input(self, node: gs.Node, index: int, values: np.ndarray) -> None:
        """Give ``node`` a new constant at input ``index`` (appended when index == len)."""
        base = node.inputs[index].name if index < len(node.inputs) else f"{node.name}_in{index}"
        const = gs.Constant(self.fresh_name(f"{base or node.name}_morph"), np.asarray(values))
        while len(node.inputs) < index:
            node.inputs.append(gs.Variable.empty())
        if index == len(node.inputs):
            node.inputs.append(const)
        else:
            node.inputs[index] = const


def _zero_sum_noise(
    shape: tuple[int, ...], imap: IndexMap, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """Normal noise along axis 0 (the new channels), minus its mean over each channel's copies."""
    noise = rng.standard_normal(shape) * scale
    sums = np.zeros((imap.old_count, *shape[1:]))
    np.add.at(sums, imap.old_index, noise)
    copies = imap.copies.reshape((-1,) + (1,) * (len(shape) - 1))
    return noise - sums[imap.old_index] / copies


def _follow_axis(
    values: np.ndarray, axis: int, role: str, imap: IndexMap, init: Init, rng: np.random.Generator
) -> np.ndarray:
    """One constant axis after surgery: taken by the map, then divided or initialised."""
    moved = np.moveaxis(np.asarray(values), axis, 0)
    out = moved[imap.old_index]
    new = imap.replica > 0
    if not np.any(new):
        return np.moveaxis(out, 0, axis)
    if role == IN and init.mode == PRESERVE:
        copies = imap.copies.reshape((-1,) + (1,) * (out.ndim - 1))
        divided = out / copies
        if init.noise:
            scale = init.noise * float(np.std(moved))
            divided = divided + _zero_sum_noise(out.shape, imap, scale, rng)
        out = divided.astype(out.dtype)
    elif role == IN:
        out[new] = 0
    elif role == FILTER and init.mode == RANDOM:
        out[new] = rng.normal(0.0, float(np.std(moved)), size=out[new].shape)
    return np.moveaxis(out, 0, axis)


def _rewrite_constants(
    graph: gs.Graph, cg: ChannelGraph, maps: dict[str, IndexMap], init: Init
) -> None:
    """Every followed constant axis, once per (constant, axis), in every node that uses it."""
    rng = np.random.default_rng(init.seed)
    by_const: dict[str, dict[int, tuple[str, str]]] = {}
    for follow in cg.follows:
        by_const.setdefault(follow.const, {}).setdefault(follow.axis, (follow.tensor, follow.role))
    constants = {t.name: t for t in graph.tensors().values() if isinstance(t, gs.Constant)}
    for name, axes in by_const.items():
        const = constants.get(name)
        changed = {a: tr for a, tr in axes.items() if tr[0] in maps and maps[tr[0]].changed}
        if const is None or not changed:
            continue
        values = np.asarray(const.values)
        for axis, (tensor, role) in sorted(changed.items()):
            values = _follow_axis(values, axis, role, maps[tensor], init, rng)
        const.values = values


def _internal(model: Model, what: str, error: Exception) -> MorphError:
    """Our bug, unless onnxruntime cannot run the input model either: then the input is
    broken, and ``model.probe`` raises that (exit code 2)."""
    model.probe()
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return MorphError(f"surgery failed: {what}: {first}", file=model.path, exit_code=EXIT_INTERNAL)


def check_result(proto: onnx.ModelProto, model: Model) -> None:
    """Full ``onnx.checker`` check and one onnxruntime run; outputs keep their shapes, and
    weights and outputs stay finite (``validate.check_result``).

    Raises:
        MorphError: exit code 3 (internal error), naming the check that failed; exit code 1
            for non-finite weights or outputs.
    """
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as error:
        raise _internal(model, "onnx.checker rejects the result", error) from None
    try:
        outputs = run_model(proto, dummy_inputs(proto, model.input_shapes))
    except Exception as error:
        raise _internal(model, "onnxruntime cannot run the result", error) from None
    for name, value in outputs.items():
        want = model.shapes.get(name)
        if want is not None and tuple(np.shape(value)) != tuple(want):
            raise _internal(
                model, "output shape changed", ValueError(f"{name}: {np.shape(value)} != {want}")
            )
    floats = [v for v in outputs.values() if np.issubdtype(np.asarray(v).dtype, np.floating)]
    finite = all(np.isfinite(v).all() for v in floats)
    reference = model.reference if finite else model.probe()
    check_finite_result(proto, outputs, model.non_finite, reference, model.path)


def apply_copies(
    model: Model,
    cg: ChannelGraph,
    copies: Sequence[np.ndarray],
    init: Init | None = None,
    output_deltas: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """Remove, keep and replicate channels; the input model is left untouched.

    Args:
        model: The analysed model.
        cg: Its channel graph.
        copies: Per group, an int per class (``group.classes`` order): 0 removes, 1 keeps,
            k > 1 keeps and adds k - 1 replicas. Pinned groups must be all ones; no group
            may lose every class.
        init: How new channels start. Defaults to ``Init()`` (preserve, no noise).
        output_deltas: Node name -> an amount per channel of its first output (before
            surgery) to add to that output, through the node rule's ``add_to_output``
            (removed constant channels folded into a consumer's bias).

    Returns:
        The checked ModelProto with the input model's opsets, metadata and graph I/O.

    Raises:
        MorphError: exit code 3 when the result fails the checker or onnxruntime.
    """
    init = init or Init()
    maps = index_maps(cg, copies)
    graph = model.graph.copy()
    _rewrite_constants(graph, cg, maps, init)
    ctx = RewriteContext(model, cg, maps, graph)
    nodes = {node.name: node for node in graph.nodes}
    for node in list(graph.nodes):
        rule = rule_for(node.op, node.domain)
        if rule is None:
            continue
        try:
            rule.rewrite(node, ctx)
        except ValueError as error:
            raise _internal(model, f"node {node.name!r} ({node.op})", error) from None
    for name, delta in (output_deltas or {}).items():
        node = nodes[name]
        out = maps.get(node.outputs[0].name)
        delta = np.asarray(delta) if out is None else np.asarray(delta)[out.old_index]
        rule_for(node.op, node.domain).add_to_output(node, delta, ctx)
    io = {t.name for t in (*graph.inputs, *graph.outputs)}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor.name not in io:
            tensor.shape = None
    graph.toposort()
    proto = dataclasses.replace(model, graph=graph).to_proto()
    check_result(proto, model)
    return proto
