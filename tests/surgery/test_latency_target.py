"""When a measured latency result counts as landed in the target's band."""

from __future__ import annotations

import pytest

from morphcli.resources.targets import parse_latency_target
from morphcli.surgery.latency_target import Comparison, landed


def _measured(ratio: float, low: float, high: float, before_ms: float = 10.0) -> Comparison:
    return Comparison(before_ms, ratio * before_ms, ratio, (low, high), runs=20)


@pytest.mark.parametrize(
    ("ratio", "low", "high", "want"),
    [
        (0.475, 0.47, 0.48, True),  # at AIM, interval inside [0.45, 0.50]
        (0.49, 0.48, 0.505, False),  # median in the band, interval past its top
        (0.455, 0.445, 0.46, False),  # interval under its bottom
        (0.513, 0.505, 0.525, False),  # PAN's written result: over the band
    ],
)
def test_a_share_target_lands_only_with_its_whole_interval_in_the_band(ratio, low, high, want):
    assert landed(_measured(ratio, low, high), parse_latency_target("50%")) is want


def test_an_absolute_target_scales_the_interval_by_the_input_latency():
    # 3 ms against an input of 10 ms: ratio 0.285 is 0.95 of the target; the interval
    # [0.28, 0.29] is [0.933, 0.967] of it.
    target = parse_latency_target("3ms")
    measured = _measured(0.285, 0.28, 0.29)
    assert measured.fraction_interval(target) == pytest.approx((0.28 / 0.3, 0.29 / 0.3))
    assert landed(measured, target)
    assert not landed(_measured(0.295, 0.29, 0.305), target)
