"""lambda auto: its calibrated start has the scale of the proximal step (not of the loss or
the cost units), and it follows a plan to the goal."""

from __future__ import annotations

import pytest
import torch

from morphcli.learn.penalty import MorphNetPenalty
from morphcli.learn.strength import HIGHEST, RAISE, Strength, calibrated
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
    value = calibrated(penalty, 0.5 * start, lr, steps)
    for _ in range(steps):
        penalty.shrink(lr * value)
    # Channels with the lowest p / W die first; W falls as they do, so a bit less goes.
    assert 0.4 * start <= penalty.cost() <= 0.65 * start, penalty.cost() / start


def test_calibration_scales_with_the_channels_and_the_step_not_the_cost_units(resnet):
    module, penalty = resnet
    base = calibrated(penalty, 0.5 * penalty.cost(), 0.01, 100)
    assert calibrated(penalty, 0.5 * penalty.cost(), 0.01, 200) == pytest.approx(base / 2)
    assert calibrated(penalty, 0.5 * penalty.cost(), 0.02, 100) == pytest.approx(base / 2)
    assert calibrated(penalty, 0.2 * penalty.cost(), 0.01, 100) > 1.5 * base
    with torch.no_grad():  # BN scales 10x larger: the same channels need a 10x lambda
        for group in penalty.sources:
            for source in group:
                module.tensor(source.const).mul_(10.0)
    assert calibrated(penalty, 0.5 * penalty.cost(), 0.01, 100) == pytest.approx(10 * base)


def test_auto_strength_follows_its_plan_to_the_goal():
    strength = Strength(1.0, auto=True, goal=25.0, start=100.0)
    assert strength.planned(0.5) == pytest.approx(50.0)  # geometric: 100 -> 25
    strength.check(40.0, progress=0.5)  # ahead of the plan (50 wanted), over the goal: kept
    assert strength.value == 1.0
    strength.check(60.0, progress=0.5)  # behind it: raised
    assert strength.value == pytest.approx(RAISE)
    strength.check(25.3, progress=1.5)  # past the deadline the plan is the goal: 2% slack
    assert strength.value == pytest.approx(RAISE)
    strength.check(20.0, progress=1.5)  # under the goal: lowered
    assert strength.value == pytest.approx(1.0)
    for _ in range(200):
        strength.check(90.0, progress=2.0)
    assert strength.value == pytest.approx(HIGHEST)  # a guard, far from any useful value
    fixed = Strength(1e-6)
    fixed.check(100.0, progress=2.0)
    assert fixed.value == 1e-6
