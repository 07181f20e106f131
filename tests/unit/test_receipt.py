"""The receipt clock: strictly increasing times for readings stamped on receipt (issue 13)."""

from __future__ import annotations

import threading

import pytest

from agent.counters import Counters
from agent.pipeline import Pipeline
from agent.receipt import STEP_S, ReceiptClock
from agent.records import Reading
from tests.helpers import outgoing


def test_same_wall_time_gives_increasing_times() -> None:
    clock = ReceiptClock(wall=lambda: 1_700_000_000.0)
    times = [clock() for _ in range(1000)]
    assert all(b > a for a, b in zip(times, times[1:]))
    assert times[0] == 1_700_000_000.0
    assert times[-1] - times[0] < 1000 * STEP_S * 1.01  # a burst is spread over microseconds, not more


def test_follows_the_wall_clock_when_it_moves_on() -> None:
    now = [100.0]
    clock = ReceiptClock(wall=lambda: now[0])
    assert clock() == 100.0
    now[0] = 101.5
    assert clock() == 101.5


def test_never_goes_back_when_the_wall_clock_steps_back() -> None:
    now = [2_000.0]
    clock = ReceiptClock(wall=lambda: now[0])
    first = clock()
    now[0] = 1_000.0  # NTP stepped the clock back
    second = clock()
    assert second > first and second - first < 1e-5
    now[0] = 3_000.0
    assert clock() == 3_000.0


def test_threads_never_share_a_time() -> None:
    clock = ReceiptClock(wall=lambda: 1_700_000_000.0)
    got: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        mine = [clock() for _ in range(2000)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == len(got) == 8000


def test_a_big_step_back_of_the_wall_clock_is_followed() -> None:
    now = [10_000.0]
    clock = ReceiptClock(wall=lambda: now[0], step_back_s=600.0)
    clock()
    now[0] = 10_000.0 - 7200  # set back two hours: more than the cleaner's MAX_TIME_JUMP_S
    assert clock() == 2_800.0
    assert clock() == 2_800.0 + STEP_S  # and increasing from there


def test_a_step_back_within_step_back_s_is_absorbed() -> None:
    now = [10_000.0]
    clock = ReceiptClock(wall=lambda: now[0], step_back_s=600.0)
    first = clock()
    now[0] = 10_000.0 - 100
    assert 0 < clock() - first < 1e-5


def test_the_agent_follows_steps_beyond_every_cleaners_limit() -> None:
    from agent import receipt

    before = receipt.receipt_time.step_back_s
    try:
        receipt.follow_steps_beyond([600.0, 3600.0])
        assert receipt.receipt_time.step_back_s == 3600.0  # the largest: each cleaner then sees a step
        receipt.follow_steps_beyond([600.0, 0.0])
        assert receipt.receipt_time.step_back_s == 0.0  # a cleaner without the check would refuse it as out of order
    finally:
        receipt.receipt_time.step_back_s = before


@pytest.mark.parametrize("step_back_s", [600.0, 0.0])
def test_summaries_go_on_when_the_wall_clock_is_set_back_two_hours(tmp_path, model, recording, step_back_s) -> None:
    """A serial or Modbus sensor stamped on receipt, the gateway's clock set back two hours (an engineer's `date`,
    an RTC ahead of NTP): the stamps follow the step, the cleaner takes it as a clock step and summaries go on.
    Frozen (step_back_s 0, as before), no summary closed for the 6.7 minutes that follow (two hours, in all)."""
    wall = [recording[0].ts]
    clock = ReceiptClock(wall=lambda: wall[0], step_back_s=step_back_s)
    p = Pipeline(model, Counters(), tmp_path, calibration_samples=0, summary_interval_s=60)
    after = []
    for i, r in enumerate(recording[:600]):
        wall[0] = r.ts - (7200 if i >= 200 else 0)
        summaries = [m for m in outgoing(p.process(Reading(clock(), r.values, r.sensor))) if m.kind == "summary"]
        if i >= 200:
            after += summaries
    if step_back_s:
        assert p.counters.get("gap.time_step") == 1 and p.counters.get("reject.past_ts") == 4
        assert len(after) >= 5, [(m.payload["period_start"], m.payload["period_end"]) for m in after]
    else:
        assert after == [] and p.counters.get("gap.time_step") == 0
