"""The receipt clock: strictly increasing times for readings stamped on receipt (issue 13)."""

from __future__ import annotations

import threading

from agent.receipt import STEP_S, ReceiptClock


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
