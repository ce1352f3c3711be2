"""Channels that are already dead or constant, and the bias folds that remove them exactly.

A class is a candidate when a producer's filter row for it is all zero or a normalisation
scale (BN gamma) of it is under the threshold. Removing a class drops its channels from every
linear consumer (the ``in`` follows); that is exact when the class is zero at each consumer's
input, and exact after folding when it is a constant c there and the consumer turns c into a
fixed amount per output channel (a 1x1 conv without padding, Gemm, MatMul: the rule's
``constant_input_effect``), which goes into the consumer's bias.

Where a candidate's value flows is found by running the model, not by re-implementing ops:
the candidates' small scales are set to zero in a copy, the consumers' inputs are exposed and
the copy runs on two random inputs. A candidate channel whose values are equal over both
inputs and every position is that constant (its producer no longer depends on the input);
one that still varies (a residual join with a live branch, a border effect) is kept.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from morphcli.graph.channels import FILTER, IN, SCALE, ChannelGraph
from morphcli.graph.model import Model
from morphcli.graph.runtime import dummy_inputs, run_model
from morphcli.ops import rule_for
from morphcli.surgery.importance import class_importance

# Two probe inputs: a channel equal over both and over every position is input-independent.
PROBE_SEEDS = (1, 2)
# float32 values computed along different kernel paths (borders, vector tails) may differ
# in the last bits; a constant channel's spread stays within this relative tolerance.
CONSTANT_RTOL = 1e-6


@dataclass(frozen=True)
class Kept:
    """A candidate channel that stays: group, index in the group, and why."""

    group: int
    index: int
    reason: str

    def __str__(self) -> str:
        return f"group {self.group} channel {self.index}: {self.reason}"


@dataclass
class DeadPlan:
    """Per group, the indices (``group.classes`` order) to remove; the bias folds per node
    (amount per channel of its output, before surgery); the candidates kept and why."""

    removed: list[np.ndarray]
    output_deltas: dict[str, np.ndarray] = field(default_factory=dict)
    kept: list[Kept] = field(default_factory=list)
    folded: int = 0


def _rows(values: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(np.asarray(values), axis, 0)
    return moved.reshape(moved.shape[0], -1)


def candidates(
    model: Model, cg: ChannelGraph, threshold: float
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Candidate classes (bool per class id) of removable groups and, per scale constant,
    its small entries of those classes (the probe sets them to zero; pinned classes keep
    theirs, so they cannot make a varying candidate look constant)."""
    n = len(cg.class_of_slot)
    found = np.zeros(n, dtype=bool)
    small: dict[str, np.ndarray] = {}
    constants = model.graph.tensors()
    prunable = np.zeros(n, dtype=bool)
    for group in cg.groups:
        prunable[group.classes] = group.prunable
    for follow in cg.follows:
        if follow.role not in (FILTER, SCALE) or follow.tensor not in cg.tensors:
            continue
        rows = _rows(constants[follow.const].values, follow.axis)
        classes = cg.classes(follow.tensor)
        if follow.role == FILTER:
            hit = ~np.any(rows != 0, axis=1) & prunable[classes]
        else:
            hit = (np.abs(rows).max(axis=1) < threshold) & prunable[classes]
            small[follow.const] = small.get(follow.const, np.zeros(len(hit), bool)) | hit
        found[classes[hit]] = True
    return found, small


def _probe(
    model: Model, cg: ChannelGraph, small: dict[str, np.ndarray], tensors: list[str]
) -> list[dict[str, np.ndarray]]:
    """Values of ``tensors`` with small scales set to zero, on each probe input."""
    graph = model.graph.copy()
    by_name = graph.tensors()
    for follow in cg.follows:
        if follow.role == SCALE and follow.const in small:
            const = by_name[follow.const]
            values = np.moveaxis(np.array(const.values), follow.axis, 0)
            values[small[follow.const]] = 0
            const.values = np.moveaxis(values, 0, follow.axis)
    outputs = []
    for name in tensors:
        tensor = by_name[name]
        tensor.dtype, tensor.shape = model.dtypes[name], None
        outputs.append(tensor)
    graph.outputs = outputs
    proto = dataclasses.replace(model, graph=graph).to_proto()
    return [run_model(proto, dummy_inputs(proto, model.input_shapes, s)) for s in PROBE_SEEDS]


def _channel_constants(runs: list[dict[str, np.ndarray]], name: str, axis: int) -> np.ndarray:
    """Per channel of ``name``: its constant value, or NaN where it varies."""
    rows = np.concatenate([_rows(run[name], axis) for run in runs], axis=1).astype(np.float64)
    high, low = rows.max(axis=1), rows.min(axis=1)
    scale = np.maximum(np.abs(high), np.abs(low))
    return np.where(high - low <= CONSTANT_RTOL * scale, (high + low) / 2, np.nan)


def find_dead(
    model: Model,
    cg: ChannelGraph,
    threshold: float = 1e-3,
    allow_approximate: bool = False,
    round_to: int = 1,
) -> DeadPlan:
    """Which candidate channels can go, and the bias folds that keep the function.

    Args:
        model: The analysed model.
        cg: Its channel graph.
        threshold: A class whose normalisation scale is under this (absolute) counts as a
            zero scale. Defaults to 1e-3.
        allow_approximate: Also remove constant channels whose fold is inexact (a padded
            conv: the interior value goes into the bias, borders change) or impossible.
            Defaults to False.
        round_to: Remove only as many as leave a multiple of this (the least important).
            Defaults to 1.

    Returns:
        The plan; every group keeps at least its most important channel.
    """
    found, small = candidates(model, cg, threshold)
    plan = DeadPlan([np.zeros(0, dtype=np.int64) for _ in cg.groups])
    if not found.any():
        return plan
    nodes = {node.name: node for node in model.graph.nodes}
    consumers: dict[str, str] = {}
    for follow in cg.follows:
        first_input = nodes[follow.node].inputs[0].name
        if (
            follow.role == IN
            and follow.tensor == first_input
            and found[cg.classes(follow.tensor)].any()
        ):
            consumers.setdefault(follow.node, follow.tensor)
    runs = _probe(model, cg, small, sorted(set(consumers.values()))) if consumers else []
    constants = {
        node: _channel_constants(runs, tensor, cg.tensors[tensor].axis)
        for node, tensor in consumers.items()
    }
    blocked = _blocked(nodes, cg, consumers, constants, found, allow_approximate)
    importance = class_importance(model, cg)
    removed = np.zeros(len(cg.class_of_slot), dtype=bool)
    for group, score in zip(cg.groups, importance, strict=True):
        reasons = [blocked.get(int(c)) for c in group.classes]
        go = found[group.classes] & np.array([r is None for r in reasons])
        for index in np.flatnonzero(found[group.classes] & ~go):
            plan.kept.append(Kept(group.id, int(index), reasons[index]))
        for index, reason in _hold_back(go, score, round_to):
            plan.kept.append(Kept(group.id, index, reason))
        plan.removed[group.id] = np.flatnonzero(go)
        removed[group.classes[go]] = True
    folded: set[int] = set()
    for node_name, tensor in consumers.items():
        classes, values = cg.classes(tensor), constants[node_name]
        use = removed[classes] & ~np.isnan(values) & (values != 0)
        if not use.any():
            continue
        node = nodes[node_name]
        effect = rule_for(node.op, node.domain).constant_input_effect(
            node, np.where(use, values, 0.0)
        )
        if effect is not None:
            plan.output_deltas[node_name] = effect[0]
            folded.update(int(c) for c in classes[use])
    plan.folded = len(folded)
    return plan


def _hold_back(go: np.ndarray, score: np.ndarray, round_to: int) -> list[tuple[int, str]]:
    """Clear, in place, the removals a group cannot take: its last channel, and those that
    would leave a width that is not a multiple of ``round_to`` (the most important first)."""
    held = []
    if go.all():
        keep = int(np.argmax(score))
        go[keep] = False
        held.append((keep, "a group keeps at least one channel"))
    left = len(go) - int(go.sum())
    rounded = -(-left // round_to) * round_to
    back = rounded - left if rounded < len(go) else int(go.sum())
    if back:
        picked = np.flatnonzero(go)
        for index in picked[np.argsort(-score[picked], kind="stable")][:back]:
            go[index] = False
            held.append((int(index), f"--round-to {round_to}"))
    return held


def _blocked(
    nodes: dict[str, gs.Node],
    cg: ChannelGraph,
    consumers: dict[str, str],
    constants: dict[str, np.ndarray],
    found: np.ndarray,
    allow_approximate: bool,
) -> dict[int, str]:
    """Candidate classes that must stay, with the reason: they vary at a consumer, or their
    constant does not fold exactly there (unless approximate folds are allowed)."""
    blocked: dict[int, str] = {}
    for node_name, tensor in consumers.items():
        node = nodes[node_name]
        classes, values = cg.classes(tensor), constants[node_name]
        mine = found[classes]
        for cls in classes[mine & np.isnan(values)]:
            blocked.setdefault(int(cls), f"its value varies at {node_name} ({node.op})")
        nonzero = mine & ~np.isnan(values) & (values != 0)
        if not nonzero.any() or allow_approximate:
            continue
        effect = rule_for(node.op, node.domain).constant_input_effect(
            node, np.where(nonzero, values, 0.0)
        )
        if effect is None or not effect[1]:
            why = "cannot" if effect is None else "would not exactly"
            for cls in classes[nonzero]:
                blocked.setdefault(
                    int(cls), f"its constant {why} fold into {node_name} ({node.op})"
                )
    return blocked
