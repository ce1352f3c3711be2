"""A resource: what a width configuration costs, as a function of the alive channel count
of every group, with its gradient (what one more channel of each group costs).

The penalty, the width searches and the reports take a ``Resource`` and never ask which one
it is. A ``ResourceKind`` names a resource before a model is at hand and binds it to an
analysed model (the penalty and every shrink round analyse a model of their own): FLOPs and
parameters are exact counts of the cost model (``FLOPS``, ``PARAMS``); latency is a model
fitted to measurements (``resources.latency``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Protocol

import numpy as np

from morphcli.resources.cost import CostModel, TermTable

if TYPE_CHECKING:
    from morphcli.graph.channels import ChannelGraph
    from morphcli.graph.model import Model


class Resource(ABC):
    """A function of the alive channel counts per group (``alive``: one float per group)."""

    name: str  # "flops", "params", "latency"
    unit: str  # how amounts read: "FLOPs", "params", "ms"

    @abstractmethod
    def value(self, alive: np.ndarray) -> float:
        """The amount at ``alive``."""

    @abstractmethod
    def gradient(self, alive: np.ndarray) -> np.ndarray:
        """d value / d alive[g]: what one more channel of each group costs."""

    def penalty_weights(self, alive: np.ndarray) -> np.ndarray:
        """``W_g``, the weight of ``sum(p_g)`` in the MorphNet penalty. Defaults to the
        gradient."""
        return self.gradient(alive)


class ResourceKind(Protocol):
    """A resource not yet bound to a model."""

    name: str

    def bind(self, model: Model, cg: ChannelGraph, cm: CostModel) -> Resource:
        """The resource over ``cg``'s groups."""
        ...


class CountResource(Resource):
    """FLOPs or parameters: the cost model's exact count.

    The penalty weight adds, for every term tied to its input (a depthwise conv), its
    coefficient per tied channel: the paper's ``C * (sum(p_A) + sum(p_B))`` where the
    gradient alone gives ``C * sum(p_B)``.
    """

    def __init__(self, table: TermTable, name: str) -> None:
        self.table = table
        self.name = name
        self.unit = "FLOPs" if name == "flops" else "params"
        tied = np.zeros(table.n_groups)
        for term in table.terms:
            if term.tied is not None:
                np.add.at(tied, term.tied.groups, term.coef * term.tied.counts)
        self._tied = tied

    def value(self, alive: np.ndarray) -> float:
        return self.table.total(np.asarray(alive, dtype=np.float64))

    def gradient(self, alive: np.ndarray) -> np.ndarray:
        return self.table.gradient(np.asarray(alive, dtype=np.float64))

    def penalty_weights(self, alive: np.ndarray) -> np.ndarray:
        return self.gradient(alive) + self._tied


def count_resource(cm: CostModel, name: str) -> CountResource:
    """FLOPs (``"flops"``) or parameters (``"params"``) of ``cm``; ValueError for other names."""
    if name not in ("flops", "params"):
        raise ValueError(f"unknown resource {name!r}: expected flops or params")
    return CountResource(cm.table(name), name)


class CountKind:
    """FLOPs or parameters, before a model is at hand."""

    def __init__(self, name: str) -> None:
        self.name = name

    def bind(self, model: Model, cg: ChannelGraph, cm: CostModel) -> Resource:
        return count_resource(cm, self.name)

    def __repr__(self) -> str:
        return f"CountKind({self.name!r})"


FLOPS = CountKind("flops")
PARAMS = CountKind("params")


def resource_kind(resource: str | ResourceKind) -> ResourceKind:
    """``"flops"`` and ``"params"`` by name; any other kind (a latency model) as it is."""
    if not isinstance(resource, str):
        return resource
    kinds = {"flops": FLOPS, "params": PARAMS}
    if resource not in kinds:
        raise ValueError(f"unknown resource {resource!r}: expected flops or params")
    return kinds[resource]
