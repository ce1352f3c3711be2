"""Latency as a resource: a model fitted to onnxruntime measurements of the model itself.

The model's nodes fall into units, the nodes onnxruntime runs in one kernel (``kernels``).
Each unit's time is a piecewise-linear function of its FLOPs and of the elements it reads
and writes, both functions of the alive channels (``latency_fit``); the whole model is

    latency(alive) = scale * sum_u t_u(alive)

where ``scale`` calibrates the sum of profiled kernel times to whole-model runs
(``fit_latency``). The gradient is the slope of each unit's staircase envelope: what one
more channel of a group costs on average over a kernel step.

A ``LatencyModel`` is measured once for a model and a runtime (``surgery.latency``), cached
(``latency_cache``), and bound to that model or any model surgery derived from it (units are
named by nodes, which surgery keeps).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from morphcli.graph.channels import ChannelGraph
from morphcli.graph.model import Model
from morphcli.resources.cost import CostModel, CostTerm, Factor, TermTable, build_traffic_table
from morphcli.resources.latency_fit import N_COEF, STEPS, Features, UnitFit, fit_unit
from morphcli.resources.resource import Resource

# Bump when the measurement or the fit changes: cached models of other formats are re-measured.
FORMAT = 4


class UnitFeatures:
    """Every unit's FLOPs, traffic and alignment as functions of the alive channels of
    ``cg``'s groups (nodes missing from the model contribute nothing).

    A unit's own channel counts are those of its nodes' tensors; its neighbours' are those
    of the tensors of the nodes one edge away (consumers of its outputs, producers of its
    inputs) that are not its own.
    """

    def __init__(
        self, model: Model, cg: ChannelGraph, flops: TermTable, units: list[tuple[str, ...]]
    ) -> None:
        unit_of = {node: u for u, nodes in enumerate(units) for node in nodes}
        self.n_units = len(units)
        self.n_groups = len(cg.groups)
        traffic = build_traffic_table(model, cg)
        self._tables = [
            (table, np.array([unit_of.get(t.node, -1) for t in table.terms], np.int64))
            for table in (flops, traffic)
        ]
        factors_of: dict[str, list[Factor]] = {}
        for term in traffic.terms:
            factors_of.setdefault(term.node, []).extend(term.factors)
        neighbours: dict[str, set[str]] = {}
        for tensor in model.graph.tensors().values():
            ends = [n.name for n in (*tensor.inputs, *tensor.outputs)]
            for node in ends:
                neighbours.setdefault(node, set()).update(ends)
        own = {
            u: [f for n in nodes for f in factors_of.get(n, [])] for u, nodes in enumerate(units)
        }
        near = {
            u: [
                f
                for n in sorted({m for n in nodes for m in neighbours.get(n, ())} - set(nodes))
                for f in factors_of.get(n, [])
            ]
            for u, nodes in enumerate(units)
        }
        self._own = _ChannelCounts(own, self.n_units, self.n_groups)
        self._near = _ChannelCounts(near, self.n_units, self.n_groups)

    def work(self, alive: np.ndarray, step: int = 1) -> np.ndarray:
        """[units, 2]: FLOPs and elements read and written, channels rounded up to ``step``."""
        columns = []
        for table, owner in self._tables:
            values = table.term_values(alive, step)
            keep = owner >= 0
            columns.append(np.bincount(owner[keep], values[keep], minlength=self.n_units))
        return np.stack(columns, axis=1)

    def misaligned(self, alive: np.ndarray, align: int) -> tuple[np.ndarray, np.ndarray]:
        """Per unit, whether one of its own / its neighbours' channel counts is not a
        multiple of ``align``."""
        return self._own.misaligned(alive, align), self._near.misaligned(alive, align)

    def gradient(self, alive: np.ndarray, weights: np.ndarray, step: int) -> np.ndarray:
        """d sum_u (weights[u] . work_u(alive, step)) / d alive, ``weights`` [units, 2]."""
        grad = np.zeros(self.n_groups)
        for column, (table, owner) in enumerate(self._tables):
            per_term = np.where(owner >= 0, weights[np.maximum(owner, 0), column], 0.0)
            if np.any(per_term):
                grad += table.gradient(alive, per_term, step)
        return grad

    def table(self, configs: list[np.ndarray]) -> list[Features]:
        """Per unit, its features at every configuration (for the fit)."""
        padded = {s: np.stack([self.work(a, s) for a in configs]) for s in STEPS}
        flags = {a: [self.misaligned(c, a) for c in configs] for a in STEPS}
        own = {a: np.stack([f[0] for f in flags[a]]).astype(np.float64) for a in STEPS}
        near = {a: np.stack([f[1] for f in flags[a]]).astype(np.float64) for a in STEPS}
        return [
            Features(
                {s: padded[s][:, u] for s in STEPS},
                padded[1][:, u],
                {a: own[a][:, u] for a in STEPS},
                {a: near[a][:, u] for a in STEPS},
            )
            for u in range(self.n_units)
        ]


class _ChannelCounts:
    """Channel counts (distinct factors) per unit, checked for alignment together."""

    def __init__(self, factors: dict[int, list[Factor]], n_units: int, n_groups: int) -> None:
        terms: list[CostTerm] = []
        owners: list[int] = []
        for unit, found in factors.items():
            seen: set[tuple] = set()
            for factor in found:
                key = (tuple(factor.groups.tolist()), tuple(factor.counts.tolist()))
                if key not in seen:
                    seen.add(key)
                    terms.append(CostTerm("", 1.0, (factor,)))
                    owners.append(unit)
        self._table = TermTable(terms, n_groups)
        self._owner = np.array(owners, dtype=np.int64)
        self._n_units = n_units

    def misaligned(self, alive: np.ndarray, align: int) -> np.ndarray:
        sizes = np.rint(self._table.term_values(alive)).astype(np.int64)
        off = (sizes % align != 0).astype(np.float64)
        return np.bincount(self._owner, off, minlength=self._n_units) > 0


class UnitTimes:
    """The fitted units as arrays: their times and the gradient of their sum at any widths."""

    def __init__(self, fits: list[UnitFit]) -> None:
        self.coef = np.array([f.coef for f in fits], dtype=np.float64).reshape(-1, N_COEF)
        self.step = np.array([f.step for f in fits], dtype=np.int64)
        self.align = np.array([f.align for f in fits], dtype=np.int64)

    def _off(self, features: UnitFeatures, alive: np.ndarray) -> np.ndarray:
        """[units, 2]: 1.0 where a unit's own / neighbours' alignment is broken."""
        off = np.zeros((len(self.align), 2))
        for align in set(self.align[self.align > 1].tolist()):
            rows = self.align == align
            own, near = features.misaligned(alive, align)
            off[rows] = np.stack([own, near], axis=1)[rows]
        return off

    def _exact_weights(self, off: np.ndarray) -> np.ndarray:
        """[units, 2]: the misaligned coefficients on (F, B) that apply."""
        flops = off[:, 0] * self.coef[:, 3]
        traffic = off[:, 0] * self.coef[:, 4] + off[:, 1] * self.coef[:, 5]
        return np.stack([flops, traffic], axis=1)

    def times(self, features: UnitFeatures, alive: np.ndarray) -> np.ndarray:
        """Every unit's predicted time (ms) at ``alive``."""
        alive = np.asarray(alive, dtype=np.float64)
        exact = features.work(alive, 1)
        off = self._off(features, alive)
        out = self.coef[:, 0].copy()
        for step in set(self.step.tolist()):
            rows = self.step == step
            work = exact if step == 1 else features.work(alive, step)
            blocked = np.sum(self.coef[rows, 1:3] * work[rows], axis=1)
            out[rows] += (1.0 - off[rows, 0]) * blocked
        return out + np.sum(self._exact_weights(off) * exact, axis=1)

    def gradient(self, features: UnitFeatures, alive: np.ndarray) -> np.ndarray:
        """d sum_u t_u / d alive, each staircase by its envelope."""
        alive = np.asarray(alive, dtype=np.float64)
        off = self._off(features, alive)
        grad = features.gradient(alive, self._exact_weights(off), 1)
        blocked = self.coef[:, 1:3] * (1.0 - off[:, :1])
        for step in set(self.step.tolist()):
            padded = np.where((self.step == step)[:, None], blocked, 0.0)
            grad += features.gradient(alive, padded, step)
        return grad


@dataclass
class Unit:
    """Nodes onnxruntime runs together, their fit, and their time at full width."""

    nodes: tuple[str, ...]
    fit: UnitFit
    measured_ms: float


@dataclass
class LatencyModel:
    """A fitted latency model of one model on one runtime; a ``ResourceKind``.

    ``kernels`` lists what onnxruntime ran at full width ({"name", "op_type", "unit", "ms"});
    ``check`` holds the prediction errors on held-out width configurations.
    """

    runtime: dict[str, Any]
    units: list[Unit]
    scale: float
    measured_ms: float
    kernels: list[dict[str, Any]] = field(default_factory=list)
    check: dict[str, Any] = field(default_factory=dict)
    name: ClassVar[str] = "latency"

    def bind(self, model: Model, cg: ChannelGraph, cm: CostModel) -> LatencyResource:
        units = [u.nodes for u in self.units]
        return LatencyResource(self, UnitFeatures(model, cg, cm.flop_table, units))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "runtime": self.runtime,
            "scale": self.scale,
            "measured_ms": self.measured_ms,
            "units": [
                {"nodes": list(u.nodes), "measured_ms": u.measured_ms, **asdict(u.fit)}
                for u in self.units
            ],
            "kernels": self.kernels,
            "check": self.check,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> LatencyModel:
        """The model written by ``to_dict``; ValueError for anything else."""
        try:
            if doc["format"] != FORMAT:
                raise ValueError(f"format {doc['format']!r}, expected {FORMAT}")
            units = []
            for entry in doc["units"]:
                coef = tuple(float(c) for c in entry["coef"])
                if len(coef) != N_COEF or not all(np.isfinite(coef)):
                    raise ValueError("bad unit coefficients")
                fit = UnitFit(int(entry["step"]), int(entry["align"]), coef, entry["loo_error"])
                if fit.step not in STEPS or fit.align not in STEPS:
                    raise ValueError("bad unit step")
                nodes = tuple(str(n) for n in entry["nodes"])
                units.append(Unit(nodes, fit, float(entry["measured_ms"])))
            return cls(
                dict(doc["runtime"]), units, float(doc["scale"]), float(doc["measured_ms"]),
                list(doc["kernels"]), dict(doc["check"]),
            )  # fmt: skip
        except (KeyError, TypeError, IndexError) as error:
            raise ValueError(f"not a latency model: {error}") from None


def fit_latency(
    features: UnitFeatures,
    configs: list[np.ndarray],
    unit_ms: np.ndarray,
    whole_ms: np.ndarray,
) -> tuple[list[UnitFit], float]:
    """Fit every unit to its kernel times ``unit_ms`` [configs, units], then calibrate the
    sum to the whole-model times ``whole_ms``: ``whole = scale * sum_u t_u`` with the scale
    the median ratio over the configurations.

    The scale absorbs the framework's time between kernels and what profiling adds to each kernel.
    The whole-model times come from other sessions than the kernel times, and on a busy
    machine a session can run steadily slower than another of the same model; a median
    ratio shrugs off a minority of such draws, where a fitted intercept and slope do not."""
    fits = [fit_unit(f, unit_ms[:, u]) for u, f in enumerate(features.table(configs))]
    times = UnitTimes(fits)
    summed = np.array([times.times(features, alive).sum() for alive in configs])
    whole = np.asarray(whole_ms, dtype=np.float64)
    usable = summed > 0
    scale = float(np.median(whole[usable] / summed[usable])) if usable.any() else 1.0
    return fits, scale if scale > 0 else 1.0


class LatencyResource(Resource):
    """A latency model over one model's groups: ms at any alive widths, and ms per channel."""

    name = "latency"
    unit = "ms"

    def __init__(self, latency: LatencyModel, features: UnitFeatures) -> None:
        self.model = latency
        self.features = features
        self._times = UnitTimes([u.fit for u in latency.units])

    def unit_times(self, alive: np.ndarray) -> np.ndarray:
        """Every unit's predicted time (ms)."""
        return self._times.times(self.features, alive)

    def value(self, alive: np.ndarray) -> float:
        return self.model.scale * float(self.unit_times(alive).sum())

    def gradient(self, alive: np.ndarray) -> np.ndarray:
        return self.model.scale * self._times.gradient(self.features, alive)
