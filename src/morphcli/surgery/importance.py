"""Channel importance: how much each channel of a group matters, on one scale for all groups.

Importance of a class is BN |gamma| (the largest over the group's normalisations) where its
group has a normalisation scale, else the L2 norm of its producing filters over every
producer of the group (the two MorphNet penalty sources). It is divided by the group's
largest value, so groups compare on one scale.
"""

from __future__ import annotations

import numpy as np

from morphcli.graph.channels import FILTER, SCALE, ChannelGraph
from morphcli.graph.model import Model


def _per_position(values: np.ndarray, axis: int, reduce: str) -> np.ndarray:
    """Per index along ``axis``: the max of |v| (``max``) or the sum of v^2 (``sumsq``)."""
    moved = np.moveaxis(np.asarray(values, dtype=np.float64), axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    return np.abs(flat).max(axis=1) if reduce == "max" else np.square(flat).sum(axis=1)


def class_importance(model: Model, cg: ChannelGraph) -> list[np.ndarray]:
    """Per group, per class (``group.classes`` order): importance in [0, 1].

    gamma mode: ``max |gamma|`` over the group's scale constants; group-lasso mode:
    ``sqrt(sum of squares)`` of the class's filter entries over every producer. A group
    with neither source gets all ones (no preference).
    """
    n = len(cg.class_of_slot)
    gamma, has_gamma = np.zeros(n), np.zeros(n, dtype=bool)
    sumsq, has_filter = np.zeros(n), np.zeros(n, dtype=bool)
    constants = model.graph.tensors()
    seen: set[tuple[str, int, str]] = set()
    for follow in cg.follows:
        key = (follow.const, follow.axis, follow.tensor)
        if follow.role not in (SCALE, FILTER) or key in seen or follow.tensor not in cg.tensors:
            continue
        seen.add(key)
        values = np.asarray(constants[follow.const].values)
        classes = cg.classes(follow.tensor)
        if follow.role == SCALE:
            np.maximum.at(gamma, classes, _per_position(values, follow.axis, "max"))
            has_gamma[classes] = True
        else:
            np.add.at(sumsq, classes, _per_position(values, follow.axis, "sumsq"))
            has_filter[classes] = True
    out = []
    for group in cg.groups:
        classes = group.classes
        if has_gamma[classes].any():
            score = gamma[classes]
        elif has_filter[classes].any():
            score = np.sqrt(sumsq[classes])
        else:
            score = np.ones(group.width)
        top = score.max()
        out.append(score / top if top > 0 else np.ones(group.width))
    return out
