"""FLOPs and parameters as functions of the alive channel count of every group.

Each cost is a sum of terms ``coef * f1 * f2 ...`` where a factor is the size of a tensor's
channel axis, ``sum(count[g] * alive[g])`` over the tensor's groups. FLOP terms come from
the op rules; parameter terms from the constants: every float constant a node consumes
counts its elements, and the axes that follow a tensor's channels (``Follow``) vary with
it. Shapes are read once at build time, so evaluating at other widths is a few numpy ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np
import onnx_graphsurgeon as gs

from morphcli.graph.channels import ChannelGraph
from morphcli.graph.model import Model
from morphcli.ops import rule_for


@dataclass(frozen=True)
class Factor:
    """A channel count: ``sum(counts * alive[groups])``."""

    groups: np.ndarray
    counts: np.ndarray

    def value(self, alive: np.ndarray) -> float:
        return float(np.dot(self.counts, alive[self.groups]))


@dataclass(frozen=True)
class CostTerm:
    """``coef * prod(factors)``, owned by ``node``; ``const`` names a parameter tensor."""

    node: str
    coef: float
    factors: tuple[Factor, ...]
    const: str | None = None
    tied: Factor | None = None


class TermTable:
    """A list of terms, evaluated together with numpy.

    ``step`` > 1 evaluates every factor rounded up to a multiple of ``step`` (the channel
    padding of blocked kernels; the latency model uses it); the gradient then is the slope
    of that staircase's envelope, as if the rounded factor grew with its channels.
    """

    def __init__(self, terms: list[CostTerm], n_groups: int) -> None:
        self.terms = terms
        self.coef = np.array([t.coef for t in terms], dtype=np.float64)
        width = max((len(t.factors) for t in terms), default=0)
        factors: list[Factor] = []
        index = np.full((len(terms), width), -1, dtype=np.int64)
        for i, term in enumerate(terms):
            for j, factor in enumerate(term.factors):
                index[i, j] = len(factors)
                factors.append(factor)
        self._index = index
        self._groups = (
            np.concatenate([f.groups for f in factors]) if factors else np.zeros(0, np.int64)
        )
        self._counts = (
            np.concatenate([f.counts for f in factors]).astype(np.float64)
            if factors
            else np.zeros(0)
        )
        lengths = np.array([len(f.groups) for f in factors], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self._factor_of_entry = np.repeat(np.arange(len(factors)), lengths)
        self.n_groups = n_groups

    def _sizes(self, alive: np.ndarray, step: int) -> np.ndarray:
        """Every factor's size, then 1.0 (index -1: no factor)."""
        alive = np.asarray(alive, dtype=np.float64)
        if len(self._groups):
            sizes = np.add.reduceat(self._counts * alive[self._groups], self._starts)
        else:
            sizes = np.zeros(0)
        if step > 1:
            sizes = np.ceil(sizes / step) * step
        return np.append(sizes, 1.0)

    def term_values(self, alive: np.ndarray, step: int = 1) -> np.ndarray:
        return self.coef * np.prod(self._sizes(alive, step)[self._index], axis=1)

    def total(self, alive: np.ndarray) -> float:
        return float(self.term_values(alive).sum())

    def by_node(self, alive: np.ndarray) -> dict[str, float]:
        out: dict[str, float] = {}
        for term, value in zip(self.terms, self.term_values(alive), strict=True):
            out[term.node] = out.get(term.node, 0.0) + float(value)
        return out

    def gradient(
        self, alive: np.ndarray, weights: np.ndarray | None = None, step: int = 1
    ) -> np.ndarray:
        """d sum(weights * term values) / d alive[g]: the cost of one more channel in each
        group (``weights`` default to 1)."""
        grad = np.zeros(self.n_groups)
        if not self.terms or self._index.shape[1] == 0:
            return grad
        sizes = self._sizes(alive, step)[self._index]  # [terms, factors per term]
        ones = np.ones((len(sizes), 1))
        before = np.cumprod(np.hstack([ones, sizes[:, :-1]]), axis=1)
        after = np.cumprod(np.hstack([ones, sizes[:, :0:-1]]), axis=1)[:, ::-1]
        scale = self.coef if weights is None else self.coef * np.asarray(weights, float)
        partial = scale[:, None] * before * after  # d term / d factor j
        valid = self._index >= 0
        n_factors = len(self._starts)
        per_factor = np.bincount(self._index[valid], weights=partial[valid], minlength=n_factors)
        np.add.at(grad, self._groups, self._counts * per_factor[self._factor_of_entry])
        return grad


@dataclass
class CostModel:
    """FLOPs and parameters of a model at any alive widths (full widths by default)."""

    widths: np.ndarray
    flop_table: TermTable
    param_table: TermTable

    def _alive(self, alive: np.ndarray | None) -> np.ndarray:
        return self.widths.astype(np.float64) if alive is None else np.asarray(alive, float)

    def flops(self, alive: np.ndarray | None = None) -> float:
        return self.flop_table.total(self._alive(alive))

    def params(self, alive: np.ndarray | None = None) -> float:
        return self.param_table.total(self._alive(alive))

    def resource(self, kind: str, alive: np.ndarray | None = None) -> float:
        """``kind`` is "flops" or "params"."""
        return self.table(kind).total(self._alive(alive))

    def table(self, kind: str) -> TermTable:
        if kind not in ("flops", "params"):
            raise ValueError(f"unknown resource {kind!r}: expected flops or params")
        return self.flop_table if kind == "flops" else self.param_table

    def per_channel(self, kind: str) -> np.ndarray:
        """What one channel of each group costs at full width."""
        return self.table(kind).gradient(self._alive(None))


def _factor(cg: ChannelGraph, model: Model, tensor: str, axis: int) -> Factor | int:
    """The size of ``tensor``'s ``axis``: a Factor on its channel axis, else the fixed dim."""
    channels = cg.tensors.get(tensor)
    shape = model.shapes[tensor]
    axis = axis + len(shape) if axis < 0 else axis
    if channels is not None and channels.axis == axis:
        return Factor(channels.groups, channels.counts)
    return int(shape[axis])


def _term(node: str, coef: float, sizes: list[Factor | int], **extra) -> CostTerm:
    fixed = prod(s for s in sizes if isinstance(s, int))
    factors = tuple(s for s in sizes if isinstance(s, Factor))
    return CostTerm(node, coef * fixed, factors, **extra)


def build_cost_model(model: Model, cg: ChannelGraph) -> CostModel:
    """Collect FLOP terms from the op rules and parameter terms from the constants."""
    flop_terms: list[CostTerm] = []
    for node in model.graph.nodes:
        rule = rule_for(node.op, node.domain)
        if rule is None:
            continue
        for term in rule.flops(node, model.shapes.__getitem__):
            sizes = [_factor(cg, model, t, a) for t, a in term.dims]
            tied = None
            if term.tied_input is not None:
                tied_size = _factor(cg, model, *term.tied_input)
                tied = tied_size if isinstance(tied_size, Factor) else None
            flop_terms.append(_term(node.name, term.coef, sizes, tied=tied))
    follows: dict[str, dict[int, str]] = {}
    for follow in cg.follows:
        follows.setdefault(follow.const, {}).setdefault(follow.axis, follow.tensor)
    param_terms: list[CostTerm] = []
    counted: set[str] = set()
    for node in model.graph.nodes:
        for tensor in node.inputs:
            if not isinstance(tensor, gs.Constant) or tensor.name in counted:
                continue
            if not np.issubdtype(np.dtype(tensor.dtype), np.floating):
                continue
            counted.add(tensor.name)
            axes = follows.get(tensor.name, {})
            sizes = [
                _factor(cg, model, axes[axis], cg.tensors[axes[axis]].axis)
                if axis in axes
                else int(dim)
                for axis, dim in enumerate(tensor.shape)
            ]
            param_terms.append(_term(node.name, 1.0, sizes, const=tensor.name))
    n = len(cg.groups)
    return CostModel(cg.widths(), TermTable(flop_terms, n), TermTable(param_terms, n))


def build_traffic_table(model: Model, cg: ChannelGraph) -> TermTable:
    """The elements every node reads and writes: one term per variable input and output
    tensor of a node (batch 1), owned by the node; channel axes vary with the widths."""
    terms: list[CostTerm] = []
    for node in model.graph.nodes:
        for tensor in [*node.inputs, *node.outputs]:
            if isinstance(tensor, gs.Constant) or tensor.name not in model.shapes:
                continue
            shape = model.shapes[tensor.name]
            sizes = [_factor(cg, model, tensor.name, axis) for axis in range(len(shape))]
            terms.append(_term(node.name, 1.0, sizes))
    return TermTable(terms, len(cg.groups))
