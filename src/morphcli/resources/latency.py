"""Latency as a resource: a model fitted to onnxruntime measurements of the model itself.

The model's nodes fall into units, the nodes onnxruntime runs in one kernel (``kernels``).
Each unit's time is a piecewise-linear function of its FLOPs and of the elements it reads
and writes, both functions of the alive channels (``latency_fit``); the whole model is

    latency(alive) = a + sum_u t_u(alive)

where a is the framework's time between kernels (``fit_latency`` calibrates profiled kernel
times to whole-model runs). The gradient is the slope of each unit's staircase
envelope: what one more channel of a group costs on average over a kernel step.

A ``LatencyModel`` is measured once for a model and a runtime (``surgery.latency``), cached
(``latency_cache``), and bound to that model or any model surgery derived from it (units are
named by nodes, which surgery keeps).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from morphcli.graph.channels import ChannelGraph
from morphcli.graph.model import Model
from morphcli.resources.cost import CostModel, CostTerm, TermTable, build_traffic_table
from morphcli.resources.latency_fit import STEPS, Features, UnitFit, fit_unit
from morphcli.resources.resource import Resource

# Bump when the measurement or the fit changes: cached models of other formats are re-measured.
FORMAT = 1


class UnitFeatures:
    """Every unit's FLOPs, traffic and alignment as functions of the alive channels of
    ``cg``'s groups (nodes missing from the model contribute nothing)."""

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
        channel_terms: list[CostTerm] = []
        owners: list[int] = []
        seen: set[tuple] = set()
        for term in traffic.terms:
            unit = unit_of.get(term.node, -1)
            for factor in term.factors:
                key = (unit, tuple(factor.groups.tolist()), tuple(factor.counts.tolist()))
                if unit >= 0 and key not in seen:
                    seen.add(key)
                    channel_terms.append(CostTerm(term.node, 1.0, (factor,)))
                    owners.append(unit)
        self._channels = TermTable(channel_terms, self.n_groups)
        self._channel_unit = np.array(owners, dtype=np.int64)

    def work(self, alive: np.ndarray, step: int = 1) -> np.ndarray:
        """[units, 2]: FLOPs and elements read and written, channels rounded up to ``step``."""
        columns = []
        for table, owner in self._tables:
            values = table.term_values(alive, step)
            keep = owner >= 0
            columns.append(np.bincount(owner[keep], values[keep], minlength=self.n_units))
        return np.stack(columns, axis=1)

    def misaligned(self, alive: np.ndarray, align: int) -> np.ndarray:
        """Per unit, whether one of its channel counts is not a multiple of ``align``."""
        sizes = np.rint(self._channels.term_values(alive)).astype(np.int64)
        off = (sizes % align != 0).astype(np.float64)
        return np.bincount(self._channel_unit, off, minlength=self.n_units) > 0

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
        misaligned = {a: np.stack([self.misaligned(c, a) for c in configs]) for a in STEPS}
        return [
            Features(
                {s: padded[s][:, u] for s in STEPS},
                padded[1][:, u],
                {a: misaligned[a][:, u].astype(np.float64) for a in STEPS},
            )
            for u in range(self.n_units)
        ]


class UnitTimes:
    """The fitted units as arrays: their times and the gradient of their sum at any widths."""

    def __init__(self, fits: list[UnitFit]) -> None:
        self.coef = np.array([f.coef for f in fits], dtype=np.float64).reshape(-1, 5)
        self.step = np.array([f.step for f in fits], dtype=np.int64)
        self.align = np.array([f.align for f in fits], dtype=np.int64)

    def _off(self, features: UnitFeatures, alive: np.ndarray) -> np.ndarray:
        """1.0 for units whose own alignment is broken at ``alive``."""
        off = np.zeros(len(self.align))
        for align in set(self.align[self.align > 1].tolist()):
            rows = self.align == align
            off[rows] = features.misaligned(alive, align)[rows]
        return off

    def times(self, features: UnitFeatures, alive: np.ndarray) -> np.ndarray:
        """Every unit's predicted time (ms) at ``alive``."""
        alive = np.asarray(alive, dtype=np.float64)
        exact = features.work(alive, 1)
        out = self.coef[:, 0].copy()
        for step in set(self.step.tolist()):
            rows = self.step == step
            work = exact if step == 1 else features.work(alive, step)
            out[rows] += np.sum(self.coef[rows, 1:3] * work[rows], axis=1)
        off = self._off(features, alive)
        return out + off * np.sum(self.coef[:, 3:5] * exact, axis=1)

    def gradient(self, features: UnitFeatures, alive: np.ndarray) -> np.ndarray:
        """d sum_u t_u / d alive, each staircase by its envelope."""
        alive = np.asarray(alive, dtype=np.float64)
        off = self._off(features, alive)[:, None]
        grad = features.gradient(alive, off * self.coef[:, 3:5], 1)
        for step in set(self.step.tolist()):
            weights = np.where((self.step == step)[:, None], self.coef[:, 1:3], 0.0)
            grad += features.gradient(alive, weights, step)
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
    overhead_ms: float
    measured_ms: float
    kernels: list[dict[str, Any]] = field(default_factory=list)
    check: dict[str, Any] = field(default_factory=dict)
    name: str = "latency"

    def bind(self, model: Model, cg: ChannelGraph, cm: CostModel) -> LatencyResource:
        units = [u.nodes for u in self.units]
        return LatencyResource(self, UnitFeatures(model, cg, cm.flop_table, units))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "runtime": self.runtime,
            "overhead_ms": self.overhead_ms,
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
                if len(coef) != 5 or not all(np.isfinite(coef)):
                    raise ValueError("bad unit coefficients")
                fit = UnitFit(int(entry["step"]), int(entry["align"]), coef, entry["loo_error"])
                if fit.step not in STEPS or fit.align not in STEPS:
                    raise ValueError("bad unit step")
                nodes = tuple(str(n) for n in entry["nodes"])
                units.append(Unit(nodes, fit, float(entry["measured_ms"])))
            return cls(
                dict(doc["runtime"]), units, float(doc["overhead_ms"]), float(doc["measured_ms"]),
                list(doc["kernels"]), dict(doc["check"]),
            )  # fmt: skip
        except (KeyError, TypeError, IndexError) as error:
            raise ValueError(f"not a latency model: {error}") from None


def fit_latency(
    features: UnitFeatures,
    configs: list[np.ndarray],
    unit_ms: np.ndarray,
    unit_kernels: np.ndarray,
    whole_ms: np.ndarray,
) -> tuple[list[UnitFit], float]:
    """Fit every unit to its kernel times and return the fits and the overhead.

    A profiled kernel takes longer than it does unprofiled, by about the same amount each;
    the sum of kernel times also misses the framework's work between kernels. Both are
    found by least squares over the configurations, ``whole - sum(kernel ms) = a + d *
    kernels`` (a >= 0), and every unit's times become ``ms + d * its kernels`` (``unit_ms``
    and ``unit_kernels`` are [configs, units]) before its fit, so that the whole model is

        latency = a + sum_u t_u.
    """
    gap = np.asarray(whole_ms, float) - unit_ms.sum(axis=1)
    counted = unit_kernels.sum(axis=1)
    (a, d), *_ = np.linalg.lstsq(np.stack([np.ones(len(gap)), counted], axis=1), gap, rcond=None)
    if a < 0:
        a, d = 0.0, float(gap @ counted / max(counted @ counted, 1e-12))
    corrected = np.maximum(unit_ms + d * unit_kernels, 0.0)
    fits = [fit_unit(f, corrected[:, u]) for u, f in enumerate(features.table(configs))]
    return fits, float(a)


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
        return self.model.overhead_ms + float(self.unit_times(alive).sum())

    def gradient(self, alive: np.ndarray) -> np.ndarray:
        return self._times.gradient(self.features, alive)
