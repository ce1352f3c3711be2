"""lambda, the penalty's strength: where ``lambda auto`` starts and how it is steered.

Structure learning takes the penalty as a proximal step after every optimizer step
(``MorphNetPenalty.shrink(lr * lambda)``), which moves a channel's ``p`` toward zero by
``lr * lambda * W_g`` per step. So lambda has a scale of its own, whatever the task loss or
the model's cost units are: over ``T`` steps the penalty alone would kill every channel whose
``p / W_g`` is under ``lr * lambda * T``. ``lambda auto`` starts where that would bring the
alive cost to the goal (``calibrated``) and is steered from there, since the task loss
holds on to the channels it needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from morphcli.learn.penalty import MorphNetPenalty

# lambda auto is raised (lowered) by this factor at a check where the alive cost is behind
# its plan (under the goal); SLACK is how far over the plan still counts as on track.
RAISE = 1.5
SLACK = 0.02
# Bounds on lambda auto relative to its start: a guard against a runaway, not a cap that
# binds in practice (a learning phase that cannot reach its goal is reported as such).
LOWEST, HIGHEST = 1e-3, 1e6


@dataclass
class Strength:
    """lambda, and with ``auto`` its steering toward ``goal``.

    The plan: the alive cost falls geometrically from ``start`` to ``goal`` by the deadline,
    ``plan(t) = start * (goal / start) ** min(t, 1)`` with ``t`` the share of the steps to
    the deadline done. At each check lambda is raised by RAISE while the alive cost is over
    ``(1 + SLACK) * max(plan(t), goal)`` and lowered by RAISE while it is under the goal
    (fewer channels die; dead ones may revive where the task loss pulls them back).
    """

    value: float
    auto: bool = False
    goal: float = 0.0
    start: float = 0.0
    initial: float | None = None

    def __post_init__(self) -> None:
        self.initial = self.value if self.initial is None else self.initial

    def planned(self, progress: float) -> float:
        """The alive cost the plan wants at ``progress`` (share of the steps to the deadline)."""
        if self.start <= self.goal:
            return self.goal
        return self.start * (self.goal / self.start) ** min(max(progress, 0.0), 1.0)

    def check(self, alive_cost: float, progress: float) -> None:
        """One check of the alive cost at ``progress``."""
        if not self.auto:
            return
        if alive_cost > (1.0 + SLACK) * max(self.planned(progress), self.goal):
            self.value = min(self.value * RAISE, HIGHEST * self.initial)
        elif alive_cost < self.goal:
            self.value = max(self.value / RAISE, LOWEST * self.initial)


def calibrated(penalty: MorphNetPenalty, goal: float, lr: float, steps: int) -> float:
    """The lambda at which ``steps`` proximal steps of size ``lr * lambda`` would, without
    any pull from the task loss, kill just enough channels (those of lowest ``p / W_g``) to
    bring the alive cost to ``goal``; every group keeps at least one channel."""
    alive = penalty.alive_widths()
    weights = penalty.weights(alive)
    ratios, groups = [], []
    for gid, p in enumerate(penalty.vectors()):
        if p is None or weights[gid] <= 0:
            continue
        values = np.sort(p.detach().double().cpu().numpy())[: max(int(alive[gid]) - 1, 0)]
        ratios.append(values / weights[gid])
        groups.append(np.full(len(values), gid))
    if not ratios:
        return 1.0 / max(lr * steps, 1e-12)
    order = np.argsort(np.concatenate(ratios), kind="stable")
    ratio = np.concatenate(ratios)[order]
    group = np.concatenate(groups)[order]

    def cost(k: int) -> float:
        removed = np.bincount(group[:k], minlength=len(alive))
        return penalty.cost_model.resource(penalty.resource, alive - removed)

    low, high = 0, len(ratio)
    if cost(high) > goal:
        low = high
    while low < high:  # the fewest removals that reach the goal
        mid = (low + high) // 2
        if cost(mid) <= goal:
            high = mid
        else:
            low = mid + 1
    threshold = ratio[min(low, len(ratio)) - 1] if low else ratio[0]
    return max(float(threshold), 1e-30) / max(lr * steps, 1e-12)
