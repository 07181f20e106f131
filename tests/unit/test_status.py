"""The status rules that turn drop counters into degraded reasons (agent.status.DropWatch): ``falling behind, N
readings dropped`` from the live queue's drops, ``outbox dropping`` from the outbox's."""

from __future__ import annotations

from agent.status import FALLING_BEHIND_QUIET_S, FALLING_BEHIND_REFRESH_S, DropWatch


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_no_drops_no_reason() -> None:
    w = DropWatch(10, 5, Clock())
    assert w.update(0) is None and w.update(0) is None


def test_an_episode_from_the_first_drop_until_quiet_for_quiet_s() -> None:
    clock = Clock()
    w = DropWatch(10, 0, clock)
    assert w.update(0) is None
    assert w.update(7) == 7  # dropping: degraded at once
    clock.t += 9.9
    assert w.update(7) == 7  # no new drop for 9.9 s: still
    clock.t += 0.1
    assert w.update(7) is None  # 10 s without a drop: clears
    clock.t += 100
    assert w.update(10) == 3  # a new episode counts its own drops, not the total since start


def test_drops_that_keep_coming_keep_it_and_the_count_refreshes_at_most_every_refresh_s() -> None:
    clock = Clock()
    w = DropWatch(10, 5, clock)
    assert w.update(100) == 100
    seen = []
    for i in range(1, 21):  # a drop every second for 20 s
        clock.t += 1
        seen.append(w.update(100 + 10 * i))
    assert None not in seen  # never cleared while dropping
    assert seen[:4] == [100] * 4 and seen[4] == 150  # the number shown changes once per 5 s, not on every drop
    assert len(set(seen)) == 5
    clock.t += 10
    assert w.update(300) is None


def test_a_counter_that_restarts_lower_is_not_a_drop() -> None:
    clock = Clock()
    w = DropWatch(10, 0, clock)
    assert w.update(5) == 5
    clock.t += 20
    assert w.update(5) is None and w.update(3) is None


def test_defaults_are_what_the_docs_say() -> None:
    assert (FALLING_BEHIND_QUIET_S, FALLING_BEHIND_REFRESH_S) == (10.0, 5.0)


def test_a_reason_several_assets_share_is_said_once_naming_them() -> None:
    """A Modbus bus down under two pumps: the gateway's reasons name it once, with both; the rest per asset."""
    from agent.status import _per_asset

    bus = "modbus bus line disconnected (cannot open 127.0.0.1:5020: connection refused)"
    assert _per_asset([("pump-1", [bus]), ("pump-2", [bus, "channel stale: pump2/flow"]), ("fan", [])]) == [
        f"assets pump-1, pump-2: {bus}", "asset pump-2: channel stale: pump2/flow"]
    assert _per_asset([("pump-2", [bus])]) == [f"asset pump-2: {bus}"]
