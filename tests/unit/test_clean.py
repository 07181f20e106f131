"""Cleaning: every rejection counted by reason."""

from __future__ import annotations

import pytest

from agent.clean import Cleaner
from agent.counters import Counters
from agent.records import Reading


@pytest.mark.parametrize(
    "values, reason",
    [
        ({"a": 1.0, "b": "abc"}, "non_numeric"),
        ({"a": 1.0, "b": float("nan")}, "not_finite"),
        ({"a": float("inf"), "b": 1.0}, "not_finite"),
        ({"a": 1.0, "b": "inf"}, "not_finite"),
        ({"a": 1.0}, "missing_channel"),
        ({"a": 1.0, "b": 1000.0}, "out_of_range"),
        ({"a": 1.0, "b": -0.5}, "out_of_range"),
        ({"a": True, "b": 1.0}, "non_numeric"),
    ],
)
def test_rejections_are_counted_by_reason(values, reason):
    c = Counters()
    cl = Cleaner(["a", "b"], {"b": (0.0, 100.0)}, c)
    assert cl.clean(Reading(ts=1.0, values=values)) is None
    assert c.snapshot("reject.") == {reason: 1}


def test_good_reading_in_channel_order_and_extra_columns_ignored():
    c = Counters()
    cl = Cleaner(["b", "a"], {}, c)
    v = cl.clean(Reading(ts=1.0, values={"a": "1.5", "b": 2, "label": "x"}, sensor="s"))
    assert v is not None and list(v.values) == [2.0, 1.5] and v.sensor == "s"
    assert c.snapshot("reject.") == {}


def test_duplicate_and_out_of_order_timestamps():
    c = Counters()
    cl = Cleaner(["a"], {}, c)
    assert cl.clean(Reading(ts=2.0, values={"a": 1})) is not None
    assert cl.clean(Reading(ts=2.0, values={"a": 1})) is None
    assert cl.clean(Reading(ts=1.0, values={"a": 1})) is None
    assert cl.clean(Reading(ts=1.0, values={"a": 1}, sensor="other")) is not None
    assert c.snapshot("reject.") == {"duplicate_ts": 1, "out_of_order": 1}
