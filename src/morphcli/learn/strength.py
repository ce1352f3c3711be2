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

from dataclasses import dataclass, field

import numpy as np

from morphcli.learn.penalty import MorphNetPenalty

# lambda auto is raised (lowered) by this factor at a check where the alive cost is behind
# its plan (well under the goal); SLACK is how far off the plan still counts as on track.
RAISE = 1.25
SLACK = 0.02
# A bound on lambda auto relative to its start: a guard against a runaway, not a cap that
# binds in practice (a learning phase that cannot reach its goal is reported as such).
HIGHEST = 1e6
# Points of the plan (progress 0 ... 1) kept for interpolation.
PLAN_POINTS = 41


@dataclass
class Strength:
    """lambda, and with ``auto`` its steering toward ``goal``.

    The plan is the alive cost over the phase (``progress`` = the share of the steps to the
    deadline done) that the calibrated lambda would give if the task loss held on to nothing
    (``calibrated``): channels die in order of ``p / W_g``, the goal is reached at the
    deadline. At each check lambda is raised by RAISE while the alive cost is over
    ``(1 + SLACK) * max(plan, goal)`` (the task loss holds on to more than planned), and
    lowered by RAISE while it is under ``(1 - SLACK) * goal``.
    """

    value: float
    auto: bool = False
    goal: float = 0.0
    start: float = 0.0
    initial: float | None = None
    plan: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.initial = self.value if self.initial is None else self.initial

    def planned(self, progress: float) -> float:
        """The alive cost the plan wants at ``progress``."""
        if not self.plan:
            return self.goal
        points = np.linspace(0.0, 1.0, len(self.plan))
        return float(np.interp(min(max(progress, 0.0), 1.0), points, self.plan))

    def check(self, alive_cost: float, progress: float) -> None:
        """One check of the alive cost at ``progress``."""
        if not self.auto:
            return
        if alive_cost > (1.0 + SLACK) * max(self.planned(progress), self.goal):
            self.value = min(self.value * RAISE, HIGHEST * self.initial)
        elif alive_cost < (1.0 - SLACK) * self.goal:
            self.value = max(self.value / RAISE, self.initial / HIGHEST)

    @classmethod
    def calibrated(cls, penalty: MorphNetPenalty, goal: float, lr: float, steps: int) -> Strength:
        """lambda auto for a phase of ``steps`` proximal steps of size ``lr * lambda``.

        Without any pull from the task loss, ``steps`` such steps kill every channel whose
        ``p / W_g`` is under ``lr * lambda * steps``; lambda is the smallest that kills
        enough (lowest ratio first, every group keeping one channel and the ones the penalty
        leaves out) to bring the alive cost to ``goal``, and the plan is the alive cost along
        the way.
        """
        alive = penalty.alive_widths()
        start = penalty.resource.value(alive)
        weights = penalty.weights(alive)
        ratios, groups = [], []
        for gid, p in enumerate(penalty.vectors()):
            if p is None or weights[gid] <= 0:
                continue
            kept = max(int(penalty.least[gid]), 1)
            values = np.sort(p.detach().double().cpu().numpy())[: max(int(alive[gid]) - kept, 0)]
            ratios.append(values / weights[gid])
            groups.append(np.full(len(values), gid))
        if not ratios:  # nothing to remove: lambda does not matter
            return cls(1.0, auto=True, goal=goal, start=start)
        ratio, group = np.concatenate(ratios), np.concatenate(groups)
        order = np.argsort(ratio, kind="stable")
        ratio, group = ratio[order], group[order]

        def cost(k: int) -> float:
            removed = np.bincount(group[:k], minlength=len(alive))
            return penalty.resource.value(alive - removed)

        low, high = 0, len(ratio)
        if cost(high) > goal:
            low = high
        while low < high:  # the fewest removals that reach the goal
            mid = (low + high) // 2
            if cost(mid) <= goal:
                high = mid
            else:
                low = mid + 1
        threshold = max(float(ratio[max(low, 1) - 1]), 1e-30)
        cuts = np.searchsorted(ratio, threshold * np.linspace(0.0, 1.0, PLAN_POINTS), "right")
        plan = [cost(int(k)) for k in cuts]
        value = threshold / max(lr * steps, 1e-12)
        return cls(value, auto=True, goal=goal, start=start, plan=plan)
