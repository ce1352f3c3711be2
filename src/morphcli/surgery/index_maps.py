"""Index maps: where every channel of a tensor comes from after surgery.

Each group gets copy counts, an int per class in ``group.classes`` order: 0 removes the class,
1 keeps it, k > 1 keeps it and adds k - 1 replicas. Every tensor's new channels follow from
its classes alone: its channels split into maximal runs of one class, and each run is emitted
once per copy of its class, the replicas right after the run. A Flatten block of H*W features
or a depthwise multiplier's k outputs is thus replicated as a block, which keeps concat,
flatten and depthwise consistent with their inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from morphcli.graph.channels import ChannelGraph


@dataclass(frozen=True)
class IndexMap:
    """A tensor's channels after surgery.

    New channel j copies old channel ``old_index[j]``; ``copies[j]`` is the copy count of its
    class and ``replica[j]`` which copy it is (0: the original). ``old_copies[i]`` is the
    copy count of old channel i.
    """

    old_index: np.ndarray
    copies: np.ndarray
    replica: np.ndarray
    old_copies: np.ndarray

    @property
    def old_count(self) -> int:
        return len(self.old_copies)

    @property
    def new_count(self) -> int:
        return len(self.old_index)

    @property
    def changed(self) -> bool:
        return bool(np.any(self.old_copies != 1))

    def __str__(self) -> str:
        return f"{self.old_count} -> {self.new_count} channels"


def index_map(classes: np.ndarray, copies_of_class: np.ndarray) -> IndexMap:
    """The index map of a tensor whose channels have ``classes``, by maximal runs."""
    n = len(classes)
    old_copies = copies_of_class[classes]
    if n == 0:
        empty = np.zeros(0, np.int64)
        return IndexMap(empty, empty, empty, old_copies)
    starts = np.flatnonzero(np.r_[True, classes[1:] != classes[:-1]])
    lengths = np.diff(np.r_[starts, n])
    k = old_copies[starts]
    run = np.repeat(np.arange(len(starts)), k)
    replica = np.arange(len(run)) - np.repeat(np.cumsum(k) - k, k)
    size = lengths[run]
    offset = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)
    return IndexMap(
        old_index=np.repeat(starts[run], size) + offset,
        copies=np.repeat(k[run], size),
        replica=np.repeat(replica, size),
        old_copies=old_copies,
    )


def index_maps(cg: ChannelGraph, copies: Sequence[np.ndarray]) -> dict[str, IndexMap]:
    """Every channel tensor's index map under per-group copy counts (validated)."""
    if len(copies) != len(cg.groups):
        raise ValueError(f"{len(copies)} copy arrays for {len(cg.groups)} groups")
    per_class = np.ones(len(cg.class_of_slot), dtype=np.int64)
    for group, counts in zip(cg.groups, copies, strict=True):
        counts = np.asarray(counts, dtype=np.int64)
        if counts.shape != (group.width,) or np.any(counts < 0):
            raise ValueError(f"{group}: copy counts must be {group.width} ints >= 0")
        if not counts.any():
            raise ValueError(f"{group}: every channel removed")
        if not group.prunable and np.any(counts != 1):
            raise ValueError(f"{group} cannot change width")
        per_class[group.classes] = counts
    return {name: index_map(cg.classes(name), per_class) for name in cg.tensors}
