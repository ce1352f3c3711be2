"""Which nodes of a model each onnxruntime kernel runs.

onnxruntime executes an optimized graph: it fuses chains (Conv + BatchNormalization +
activation), changes layouts (NCHWc convolutions between reorder kernels) and folds shape
computations, and which of these it does depends on the channel counts. A kernel is tied to
one node of the model, its *anchor*, by what the optimized graph keeps of the original:

1. its first output that is a tensor of the original graph (the producer of that tensor);
2. else its name: a node's name, or a node's or tensor's name followed by a separator
   (``Mul_43/QuickGeluFusion/``, ``1177_nchwc``), the longest such prefix;
3. else (layout reorders and other inserted kernels) the anchor of the kernel that produces
   its first input, else of one that consumes its output.

A kernel also runs the nodes that were fused into it: walking up from its anchor, every node
that anchors no kernel belongs to it. Which nodes go together changes with the widths, so
units (the nodes that are timed together) are the union over every measured configuration.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import onnx

_SEPARATORS = "/_:.-"


@dataclass(frozen=True)
class OriginalGraph:
    """What attribution needs of the model: producers and variable inputs of every node."""

    producer: dict[str, str]  # tensor -> node
    inputs: dict[str, list[str]]  # node -> its variable input tensors
    outputs: dict[str, list[str]]  # node -> its output tensors
    order: list[str]  # node names, topologically sorted

    @classmethod
    def of(cls, proto: onnx.ModelProto) -> OriginalGraph:
        constants = {t.name for t in proto.graph.initializer}
        producer, inputs, outputs, order = {}, {}, {}, []
        for node in proto.graph.node:
            order.append(node.name)
            inputs[node.name] = [t for t in node.input if t and t not in constants]
            outputs[node.name] = [t for t in node.output if t]
            for tensor in node.output:
                producer[tensor] = node.name
        return cls(producer, inputs, outputs, order)


def _name_anchor(name: str, graph: OriginalGraph, by_length: list[str]) -> str | None:
    if name in graph.inputs:
        return name
    for prefix in by_length:
        rest = name[len(prefix) :]
        if name.startswith(prefix) and (not rest or rest[0] in _SEPARATORS):
            return prefix if prefix in graph.inputs else graph.producer.get(prefix)
    return None


def anchors(graph: OriginalGraph, optimized: onnx.ModelProto) -> dict[str, str]:
    """Kernel name -> anchor node, for every kernel of ``optimized`` that has one."""
    names = [*graph.inputs, *graph.producer]
    by_length = sorted(set(names), key=len, reverse=True)
    found: dict[str, str] = {}
    for node in optimized.graph.node:
        tensor = next((t for t in node.output if t in graph.producer), None)
        anchor = graph.producer[tensor] if tensor else _name_anchor(node.name, graph, by_length)
        if anchor is not None:
            found[node.name] = anchor
    made_by = {t: n.name for n in optimized.graph.node for t in n.output}
    used_by: dict[str, list[str]] = {}
    for node in optimized.graph.node:
        for tensor in node.input:
            used_by.setdefault(tensor, []).append(node.name)
    changed = True
    while changed:  # reorders chained to reorders reach an anchored kernel step by step
        changed = False
        for node in optimized.graph.node:
            if node.name in found:
                continue
            near = [made_by.get(t) for t in node.input[:1]]
            near += [k for t in node.output[:1] for k in used_by.get(t, [])]
            anchor = next((found[k] for k in near if k in found), None)
            if anchor is not None:
                found[node.name] = anchor
                changed = True
    return found


def coverage(graph: OriginalGraph, anchor_nodes: Iterable[str]) -> dict[str, str]:
    """Node -> the anchor whose kernel runs it: each anchor and the nodes above it that
    anchor no kernel (fused into it, or folded away)."""
    anchored = set(anchor_nodes)
    owner: dict[str, str] = {}
    for anchor in (n for n in reversed(graph.order) if n in anchored):
        owner[anchor] = anchor
        stack = [anchor]
        while stack:
            node = stack.pop()
            for tensor in graph.inputs[node]:
                up = graph.producer.get(tensor)
                if up is None or up in anchored or up in owner:
                    continue
                owner[up] = anchor
                stack.append(up)
    return owner


class Units:
    """Union-find over node names: nodes that some configuration ran in one kernel (a node
    seen first in a variant, added by surgery, joins on first sight)."""

    def __init__(self, nodes: Iterable[str]) -> None:
        self._parent = {n: n for n in nodes}

    def nodes(self) -> list[str]:
        return list(self._parent)

    def find(self, node: str) -> str:
        self._parent.setdefault(node, node)
        root = node
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[node] != root:
            self._parent[node], node = root, self._parent[node]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[rb] = ra

    def add(self, owner: dict[str, str]) -> None:
        for node, anchor in owner.items():
            self.union(anchor, node)

    def members(self, order: list[str]) -> list[list[str]]:
        """The units as lists of node names, in the graph's order of their first node."""
        groups: dict[str, list[str]] = {}
        for node in order:
            groups.setdefault(self.find(node), []).append(node)
        return list(groups.values())
