"""Building the channel-dependency graph: every node's op rule relates the slots of its
tensors through a ``ChannelBuilder``, then a union-find resolves classes and groups."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_graphsurgeon as gs

from morphcli.errors import MorphError
from morphcli.graph.channels import (
    FILTER,
    IN,
    PARAM,
    SCALE,
    ChannelGraph,
    Follow,
    Group,
    Pin,
    TensorChannels,
)
from morphcli.graph.model import Model
from morphcli.ops import rule_for
from morphcli.ops.base import Shape


class ChannelBuilder:
    """What op rules call to relate channels. One builder per analysis.

    Methods a rule uses: ``shape``, ``const``, ``has_channels``, ``channels`` (a tensor's
    slots, creating pinned ones for a tensor of unknown origin), ``axis``, ``produce`` (fresh
    slots), ``alias`` (same slots), ``define`` (explicit slots: concat, slice, repeat),
    ``join`` (union slot i of every tensor), ``follow`` (a constant's axis follows a tensor)
    and ``pin``.
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self._parent: list[int] = []
        self._tensors: dict[str, TensorChannels] = {}
        self._pins: dict[int, Pin] = {}
        self._producer: dict[int, str] = {}
        self.follows: list[Follow] = []
        self.warnings: list[str] = []
        self.node: gs.Node | None = None

    # Queries -------------------------------------------------------------------------------
    def shape(self, name: str) -> Shape | None:
        return self.model.shapes.get(name)

    def const(self, tensor: gs.Tensor | None) -> np.ndarray | None:
        return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None

    def has_channels(self, name: str) -> bool:
        return name in self._tensors

    def axis(self, name: str) -> int:
        return self._tensors[name].axis

    def channels(self, tensor: gs.Tensor) -> np.ndarray | None:
        """The tensor's slots. A float activation without slots yet gets pinned ones."""
        found = self._tensors.get(tensor.name)
        if found is not None:
            return found.slots
        if isinstance(tensor, gs.Constant) or not self.model.is_float(tensor.name):
            return None
        shape = self.shape(tensor.name)
        if shape is None or len(shape) < 2:
            return None
        slots = self._new_slots(shape[1])
        self._tensors[tensor.name] = TensorChannels(1, slots)
        producer = tensor.inputs[0] if tensor.inputs else None
        if producer is None:
            self._pin_slots(slots, "?", tensor.name, "channels of unknown origin")
        else:
            why = "its channel rule does not carry channels to this output"
            self._pin_slots(slots, producer.op, producer.name, why)
        return slots

    def pinned_slots(self, count: int, reason: str) -> np.ndarray:
        """Fresh slots pinned by the current node (e.g. a constant concatenated to channels)."""
        slots = self._new_slots(count)
        if self.node is not None:
            self._pin_slots(slots, self.node.op, self.node.name, reason)
        return slots

    # Relations -----------------------------------------------------------------------------
    def produce(self, tensor: gs.Tensor, count: int, axis: int = 1) -> np.ndarray:
        slots = self._new_slots(count)
        self._tensors[tensor.name] = TensorChannels(axis, slots)
        if self.node is not None:
            for slot in slots:
                self._producer[int(slot)] = self.node.name
        return slots

    def alias(self, out: gs.Tensor, source: gs.Tensor, axis: int | None = None) -> None:
        src = self._tensors.get(source.name)
        if src is None:
            slots = self.channels(source)
            if slots is None:
                return
            src = self._tensors[source.name]
        self._tensors[out.name] = TensorChannels(src.axis if axis is None else axis, src.slots)

    def define(self, out: gs.Tensor, slots: np.ndarray, axis: int = 1) -> None:
        self._tensors[out.name] = TensorChannels(axis, np.asarray(slots, dtype=np.int64))

    def join(self, tensors: Iterable[gs.Tensor]) -> None:
        maps = [m for m in (self.channels(t) for t in tensors) if m is not None]
        for other in maps[1:]:
            for a, b in zip(maps[0].tolist(), other.tolist(), strict=True):
                self._union(a, b)

    def follow(self, input_index: int, axis: int, tensor: gs.Tensor, role: str) -> None:
        """Axis ``axis`` of the current node's constant input follows ``tensor``'s channels."""
        assert self.node is not None and role in (IN, FILTER, SCALE, PARAM)
        const = self.node.inputs[input_index]
        self.follows.append(
            Follow(self.node.name, input_index, const.name, axis, tensor.name, role)
        )

    def pin(self, tensor: gs.Tensor, reason: str) -> None:
        slots = self.channels(tensor)
        if slots is not None and self.node is not None:
            self._pin_slots(slots, self.node.op, self.node.name, reason)

    # Internals -----------------------------------------------------------------------------
    def _new_slots(self, count: int) -> np.ndarray:
        start = len(self._parent)
        self._parent.extend(range(start, start + count))
        return np.arange(start, start + count, dtype=np.int64)

    def _find(self, slot: int) -> int:
        parent = self._parent
        root = slot
        while parent[root] != root:
            root = parent[root]
        while parent[slot] != root:
            parent[slot], slot = root, parent[slot]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    def _pin_slots(self, slots: np.ndarray, op: str, node: str, reason: str) -> None:
        pin = Pin(op, node, reason)
        for slot in slots.tolist():
            self._pins.setdefault(slot, pin)

    def _unite_shared_constants(self) -> None:
        """A constant axis followed by several tensors ties their channels together."""
        by_axis: dict[tuple[str, int], list[str]] = {}
        for f in self.follows:
            by_axis.setdefault((f.const, f.axis), []).append(f.tensor)
        for names in by_axis.values():
            tensors = [self._tensors[n] for n in dict.fromkeys(names) if n in self._tensors]
            for other in tensors[1:]:
                if len(other.slots) == len(tensors[0].slots):
                    for a, b in zip(tensors[0].slots.tolist(), other.slots.tolist(), strict=True):
                        self._union(a, b)

    def finish(self) -> ChannelGraph:
        """Resolve classes and groups; called once after every node was connected."""
        self._unite_shared_constants()
        roots = np.array([self._find(s) for s in range(len(self._parent))], dtype=np.int64)
        # A class's signature is the sum of random keys of the tensors it appears in:
        # classes with equal signatures appear in the same tensors (collisions ~2^-64).
        rng = np.random.default_rng(0)
        signature = np.zeros(len(roots), dtype=np.uint64)
        order: list[int] = []
        seen_maps: set[int] = set()
        for channels in self._tensors.values():
            if id(channels.slots) in seen_maps:
                continue
            seen_maps.add(id(channels.slots))
            classes = np.unique(roots[channels.slots])
            signature[classes] += rng.integers(1, 2**63, dtype=np.uint64)
            order.extend(roots[channels.slots].tolist())
        group_of_class: dict[int, int] = {}
        key_to_group: dict[int, int] = {}
        members: list[list[int]] = []
        for cls in dict.fromkeys(order):
            key = int(signature[cls])
            gid = key_to_group.setdefault(key, len(members))
            if gid == len(members):
                members.append([])
            members[gid].append(cls)
            group_of_class[cls] = gid
        pins_by_class: dict[int, Pin] = {}
        for slot, pin in self._pins.items():
            pins_by_class.setdefault(int(roots[slot]), pin)
        producers: list[dict[str, None]] = [{} for _ in members]
        for slot, node in self._producer.items():
            producers[group_of_class[int(roots[slot])]][node] = None
        tensors_of_group: list[list[str]] = [[] for _ in members]
        for name, channels in self._tensors.items():
            classes = roots[channels.slots]
            gids = np.array([group_of_class[int(c)] for c in classes], dtype=np.int64)
            uniq, first = np.unique(gids, return_index=True)
            ordered = uniq[np.argsort(first)]
            channels.groups = ordered
            channels.counts = np.array(
                [np.count_nonzero(gids == g) // len(members[g]) for g in ordered], dtype=np.int64
            )
            for g in ordered:
                tensors_of_group[int(g)].append(name)
        groups = []
        for gid, classes in enumerate(members):
            pin = next((pins_by_class[c] for c in classes if c in pins_by_class), None)
            groups.append(
                Group(
                    id=gid,
                    classes=np.array(classes, dtype=np.int64),
                    tensors=tensors_of_group[gid],
                    producers=list(producers[gid]),
                    pinned_by=pin,
                )
            )
        return ChannelGraph(
            groups, self._tensors, roots, group_of_class, self.follows, self.warnings
        )


def build_channel_graph(model: Model) -> ChannelGraph:
    """Run every node's rule over the graph in topological order and resolve the groups.

    Graph inputs and outputs are pinned; a node with no rule pins its channels and is named
    in a warning.
    """
    builder = ChannelBuilder(model)
    graph = model.graph
    for tensor in graph.inputs:
        shape = model.shapes.get(tensor.name)
        if model.is_float(tensor.name) and shape is not None and len(shape) >= 2:
            builder.produce(tensor, shape[1])
            builder._pin_slots(builder.channels(tensor), "input", tensor.name, "graph input")
    unknown: dict[str, list[str]] = {}
    for node in graph.nodes:
        builder.node = node
        rule = rule_for(node.op, node.domain)
        if rule is None:
            unknown.setdefault(node.op, []).append(node.name)
            for tensor in node.inputs:
                builder.pin(tensor, f"{node.op} has no channel rule")
            for tensor in node.outputs:
                builder.pin(tensor, f"{node.op} has no channel rule")
            continue
        try:
            rule.connect(node, builder)
        except MorphError as error:  # a rule that finds the node broken names it, we the file
            error.file = error.file or model.path
            raise
    builder.node = None
    for tensor in graph.outputs:
        slots = builder.channels(tensor)
        if slots is not None:
            builder._pin_slots(slots, "output", tensor.name, "graph output")
    for op, names in unknown.items():
        builder.warnings.append(
            f"no channel rule for {op} ({len(names)} node(s), e.g. {names[0]!r}): "
            "its channels are pinned"
        )
    return builder.finish()
