"""lambda, the penalty's strength, and how ``lambda auto`` steers it toward the goal."""

from __future__ import annotations

from dataclasses import dataclass

# lambda auto: raise by this factor, up to MAX_RAISE times the initial value.
RAISE = 2.0
MAX_RAISE = 8.0


@dataclass
class Strength:
    """lambda, the penalty's weight.

    ``auto``: at each check, lambda is raised by RAISE (never beyond MAX_RAISE times its first
    value) when the alive cost is over ``goal`` and is not on track to reach it by the
    deadline: neither the alive cost nor the penalty fell since the last check by the
    fraction ``1 - (goal / alive) ** (window / steps_left)`` that a steady geometric decline
    would need. Channels cross the alive threshold some steps after lambda starts to shrink
    them; the penalty (a continuous measure of the same cost) shows that progress early, so
    lambda does not keep rising while channels are already on their way out. Under the goal
    lambda is lowered by RAISE (not below its first value), which stops the cascade of dying
    channels that a raised lambda keeps feeding. The cap keeps lambda where the per-step
    change of a scale stays small next to the alive threshold: a far stronger lambda makes
    scales jump across zero by more than the threshold, and nothing ever counts as dead.
    """

    value: float
    auto: bool = False
    goal: float = 0.0
    last_cost: float | None = None
    last_penalty: float | None = None
    initial: float | None = None

    def __post_init__(self) -> None:
        self.initial = self.value if self.initial is None else self.initial

    def check(self, alive_cost: float, penalty: float, window: int, steps_left: int) -> None:
        """One check, ``window`` steps after the last, ``steps_left`` before the deadline."""
        if self.auto and self.last_cost and self.last_penalty and alive_cost > self.goal:
            needed = 1.0 - (self.goal / alive_cost) ** (window / max(steps_left, window))
            moved = max(1.0 - alive_cost / self.last_cost, 1.0 - penalty / self.last_penalty)
            if moved < needed:
                self.value = min(self.value * RAISE, MAX_RAISE * self.initial)
        elif self.auto and alive_cost < self.goal:
            self.value = max(self.value / RAISE, self.initial)
        self.last_cost, self.last_penalty = alive_cost, penalty
