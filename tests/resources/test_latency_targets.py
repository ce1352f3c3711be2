"""Latency targets as users write them: a share of the input's latency, or a time."""

from __future__ import annotations

import pytest

from morphcli.errors import MorphError
from morphcli.resources.targets import parse_latency_target


@pytest.mark.parametrize(
    ("text", "reference", "ms"),
    [("50%", 8.0, 4.0), ("120%", 5.0, 6.0), ("3ms", 8.0, 3.0), ("800us", 8.0, 0.8),
     ("0.25s", 8.0, 250.0), (" 2.5 MS ", 1.0, 2.5)],
)  # fmt: skip
def test_latency_targets_parse(text, reference, ms):
    assert parse_latency_target(text).of(reference) == pytest.approx(ms)


@pytest.mark.parametrize(
    ("text", "message"),
    [("abc", "expected a share"), ("5", "expected a share"), ("3M", "expected a share"),
     ("0%", "must be positive"), ("-3ms", "must be positive"), ("nanms", "must be positive"),
     ("infms", "must be positive"), ("%", "expected a share")],
)  # fmt: skip
def test_bad_latency_targets_are_one_clear_error(text, message):
    with pytest.raises(MorphError, match=message) as caught:
        parse_latency_target(text)
    assert caught.value.exit_code == 2 and "--target-latency" in str(caught.value)
