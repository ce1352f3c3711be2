"""The channel-dependency graph: what the analysis finds (``build_channel_graph`` in
``graph.builder`` makes it).

Every tensor with a channel axis holds an array of slot ids, one per channel. Op rules
relate slots; slots that must live or die together end in one union-find class; classes
that appear in exactly the same tensors form a group, i.e. one layer width. A tensor may
hold a class more than once (a depthwise multiplier, a Flatten of a spatial map into
features), so a tensor's channel count is ``sum(multiplicity[g] * width[g])`` over its
groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Pin:
    """Why a group keeps its width: the op that pinned it and the reason."""

    op: str
    node: str
    reason: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op}): {self.reason}"


# What a constant's axis that follows a tensor's channels is to its op.
IN, FILTER, SCALE, PARAM = "in", "filter", "scale", "param"


@dataclass(frozen=True)
class Follow:
    """Axis ``axis`` of constant input ``input_index`` of ``node`` follows ``tensor``'s channels.

    ``role`` says what the axis is: ``in``, a linear consumer's input axis (summed over, so
    widening divides replicated entries by their copy count); ``filter``, a producer's output
    filters (the group-lasso penalty source); ``scale``, a normalisation's per-channel scale
    (the gamma penalty source); ``param``, any other per-channel parameter (bias, shift).
    """

    node: str
    input_index: int
    const: str
    axis: int
    tensor: str
    role: str

    @property
    def reduces(self) -> bool:
        return self.role == IN

    def __str__(self) -> str:
        return f"{self.const}[axis {self.axis}] follows {self.tensor} ({self.role} of {self.node})"


@dataclass
class Group:
    """One layer width: classes that appear in exactly the same tensors."""

    id: int
    classes: np.ndarray
    tensors: list[str]
    producers: list[str]
    pinned_by: Pin | None = None

    @property
    def width(self) -> int:
        return len(self.classes)

    @property
    def prunable(self) -> bool:
        return self.pinned_by is None

    def __str__(self) -> str:
        state = f"pinned by {self.pinned_by}" if self.pinned_by else "removable"
        return f"group {self.id}: {self.width} channels, {state}"


@dataclass
class TensorChannels:
    """A tensor's channel axis and its slot ids; ``groups``/``counts`` are filled at the end."""

    axis: int
    slots: np.ndarray
    groups: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass
class ChannelGraph:
    """The result of the analysis: groups, per-tensor channel maps, follows and warnings."""

    groups: list[Group]
    tensors: dict[str, TensorChannels]
    class_of_slot: np.ndarray
    group_of_class: dict[int, int]
    follows: list[Follow]
    warnings: list[str]

    def tensor_groups(self, name: str) -> list[int]:
        """The groups a tensor's channels belong to, in channel order of first appearance."""
        channels = self.tensors.get(name)
        return [] if channels is None else [int(g) for g in channels.groups]

    def classes(self, name: str) -> np.ndarray:
        """For each channel of the tensor, its class id."""
        return self.class_of_slot[self.tensors[name].slots]

    def widths(self) -> np.ndarray:
        return np.array([g.width for g in self.groups], dtype=np.int64)

    def prunable_mask(self) -> np.ndarray:
        return np.array([g.prunable for g in self.groups], dtype=bool)
