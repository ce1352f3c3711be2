"""lambda auto: its calibrated start has the scale of the proximal step (not of the loss or
the cost units), and it follows a plan to the goal."""

from __future__ import annotations

import pytest
import torch

from morphcli.learn.penalty import MorphNetPenalty
from morphcli.learn.strength import HIGHEST, RAISE, Strength
from morphcli.learn.wrapper import OnnxModule
from tests.conftest import SAMPLE_MODELS


@pytest.fixture
def resnet():
    module = OnnxModule.from_onnx(SAMPLE_MODELS / "resnet_fashion_trained.onnx")
    return module, MorphNetPenalty(module, "flops", "gamma")


def test_the_penalty_alone_at_the_calibrated_lambda_reaches_about_the_goal(resnet):
    _, penalty = resnet
    start = penalty.cost()
    lr, steps = 0.01, 60
    strength = Strength.calibrated(penalty, 0.5 * start, lr, steps)
    assert strength.plan[0] == pytest.approx(start) and strength.plan[-1] <= 0.5 * start
    assert all(a >= b for a, b in zip(strength.plan, strength.plan[1:], strict=False))
    for step in range(steps):
        penalty.shrink(lr * strength.value)
        if step == steps // 2 - 1:  # half way, about the plan's half-way cost
            assert penalty.cost() == pytest.approx(strength.planned(0.5), rel=0.2)
    # Channels with the lowest p / W die first; W falls as they do, so a bit less goes.
    assert 0.4 * start <= penalty.cost() <= 0.65 * start, penalty.cost() / start


def test_calibration_counts_only_the_channels_the_penalty_acts_on():
    """With half of every group left out of the penalty, the calibrated lambda still brings
    the alive cost to the goal, and no group goes under its half."""
    module = OnnxModule.from_onnx(SAMPLE_MODELS / "resnet_fashion_trained.onnx")
    widths = MorphNetPenalty(module, "flops", "gamma").alive_widths()
    least = widths // 2
    penalty = MorphNetPenalty(module, "flops", "gamma", least=least)
    start = penalty.cost()
    lr, steps = 0.01, 60
    strength = Strength.calibrated(penalty, 0.5 * start, lr, steps)
    assert strength.plan[-1] <= 0.5 * start
    for _ in range(steps):
        penalty.shrink(lr * strength.value)
    assert 0.4 * start <= penalty.cost() <= 0.65 * start, penalty.cost() / start
    assert all(penalty.alive_widths() >= least)


def test_calibration_scales_with_the_step_and_the_goal(resnet):
    _, penalty = resnet

    def calibrated(goal: float, lr: float, steps: int) -> Strength:
        return Strength.calibrated(penalty, goal * penalty.cost(), lr, steps)

    base = calibrated(0.5, 0.01, 100)
    assert calibrated(0.5, 0.01, 200).value == pytest.approx(base.value / 2)
    assert calibrated(0.5, 0.02, 100).value == pytest.approx(base.value / 2)
    assert calibrated(0.2, 0.01, 100).value > 1.2 * base.value  # a deeper goal: stronger


def test_the_pull_on_a_layer_scales_as_its_task_gradient_does(resnet):
    # Scaling one layer's BN scales by 10 and the weights reading it by 1 / 10 computes the
    # same function and divides the task gradient on those scales by 10; p counts relative to
    # the layer's own scale, so the penalty's pull on them is divided by 10 as well.
    module, penalty = resnet
    (source,) = next(s for s in penalty.sources if len(s) == 1)
    gamma = module.tensor(source.const)

    def pull() -> torch.Tensor:
        gamma.grad = None
        MorphNetPenalty(module, "flops", "gamma")().backward()
        return gamma.grad.clone()

    before = pull()
    with torch.no_grad():
        gamma.mul_(10.0)
    after = pull()
    torch.testing.assert_close(after, before / 10.0, rtol=1e-5, atol=0.0)


def test_auto_strength_follows_its_plan_to_the_goal():
    strength = Strength(1.0, auto=True, goal=25.0, start=100.0, plan=[100.0, 50.0, 25.0])
    assert strength.planned(0.25) == pytest.approx(75.0)  # interpolated
    strength.check(70.0, progress=0.25)  # ahead of the plan, over the goal: kept
    assert strength.value == 1.0
    strength.check(80.0, progress=0.25)  # behind it: raised
    assert strength.value == pytest.approx(RAISE)
    strength.check(25.3, progress=1.5)  # past the deadline the plan is the goal: 2% slack
    assert strength.value == pytest.approx(RAISE)
    strength.check(20.0, progress=1.5)  # well under the goal: lowered
    assert strength.value == pytest.approx(1.0)
    for _ in range(200):
        strength.check(90.0, progress=2.0)
    assert strength.value == pytest.approx(HIGHEST)  # a guard, far from any useful value
    fixed = Strength(1e-6)
    fixed.check(100.0, progress=2.0)
    assert fixed.value == 1e-6
