"""The arrival pace of an asset (agent/arrivals.py) on a simulated clock: readings that come in clusters are judged
by the quiet between clusters, a steady source by its interval; silence beyond the tolerance is flagged, and the
next reading clears it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.arrivals import KEEP_GAPS, Arrivals


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _run(offsets: list[float], period: float, periods: int, hold_s: float = 5.0) -> tuple[int, Arrivals]:
    """Takes at ``offsets`` (s) within every ``period``, checks every 0.5 s; the checks after the second period at
    which the asset was silent."""
    clock = Clock()
    arr = Arrivals("asset", hold_s, clock)
    arr.check()  # the start
    events = sorted([(p * period + o, "take") for p in range(periods) for o in offsets]
                    + [(i * 0.5, "check") for i in range(int(periods * period / 0.5))])
    flagged = 0
    for t, kind in events:
        clock.t = 1000.0 + t
        if kind == "take":
            arr.heard()
        else:
            arr.check()
            flagged += arr.silent and t > 2 * period
    return flagged, arr


@pytest.mark.parametrize("offsets, period", [
    ([0.0, 0.04, 0.08], 60.0),  # three Modbus devices polled back to back every minute
    ([0.0, 0.01, 0.02, 0.03], 60.0),  # a serial block read in four pieces
    ([0.0, 7.0, 15.0], 300.0),  # three MQTT sensors every five minutes, offset
    ([0.0], 60.0),  # one device
], ids=["modbus-3-devices", "serial-block", "mqtt-3-sensors", "one-device"])
def test_a_source_at_its_own_pace_is_not_flagged(offsets: list[float], period: float) -> None:
    flagged, arr = _run(offsets, period, periods=40)
    assert flagged == 0
    assert arr.interval == pytest.approx(period - (offsets[-1] - offsets[0]))


def test_silence_beyond_the_pace_is_flagged_and_the_next_reading_clears_it() -> None:
    clock = Clock()
    arr = Arrivals("asset", 5.0, clock)
    arr.check()
    for _ in range(10):
        clock.t += 60.0
        arr.heard()
    clock.t += 179.0
    arr.check()
    assert not arr.silent  # within 3 intervals
    clock.t += 2.0
    arr.check()
    assert arr.silent
    arr.heard()
    assert not arr.silent


def test_a_long_gap_leaves_the_tolerance_after_keep_gaps_more_gaps() -> None:
    clock = Clock()
    arr = Arrivals("asset", 5.0, clock)
    arr.check()
    clock.t += 7200.0  # two hours without a reading
    arr.heard()
    for _ in range(KEEP_GAPS - 1):
        clock.t += 1.0
        arr.heard()
    assert arr.interval == 7200.0
    clock.t += 1.0
    arr.heard()
    assert arr.interval == 1.0 and arr.tolerance_s() == 5.0


def test_quiet_at_start_is_flagged_after_max_hold() -> None:
    clock = Clock()
    arr = Arrivals("asset", 5.0, clock)
    arr.check()
    clock.t += 5.5
    arr.check()
    assert arr.silent


def test_a_modbus_source_states_its_poll_period_and_its_first_quiet_minute_is_not_flagged() -> None:
    """The first poll comes at once, the second a poll period later: learnt from gaps alone, the asset showed
    `no readings arriving` from MAX_HOLD_S to a minute after every start."""
    from agent.counters import Counters
    from agent.modbus_config import ModbusSettings
    from agent.settings import ModbusSourceSettings
    from agent.sources.modbus import ModbusSource

    modbus = ModbusSettings.model_validate({
        "buses": {"plc": {"kind": "tcp", "host": "127.0.0.1", "tcp_port": 5020}},
        "devices": {"meter": {"bus": "plc", "unit": 1, "poll_s": 60, "channels": {"v": {"address": 0}}},
                    "fast": {"bus": "plc", "unit": 2, "poll_s": 10, "channels": {"w": {"address": 0}}}}})
    source = ModbusSource(ModbusSourceSettings(), modbus, Counters())
    assert source.expected_interval_s == 60
    clock = Clock()
    arr = Arrivals("asset", 5.0, clock, expected_s=source.expected_interval_s)
    arr.check()
    arr.heard()  # the first poll, at once
    for _ in range(119):
        clock.t += 0.5
        arr.check()
        assert not arr.silent
    clock.t += 0.5
    arr.heard()  # the second, a minute later
    clock.t += 181.0
    arr.check()
    assert arr.silent  # beyond 3 periods it is still said


def test_silence_while_the_source_is_not_connected_is_not_flagged_and_counts_from_its_return(caplog) -> None:
    """A disconnected source reports that itself (its warning, `source disconnected` in the status): the asset's
    `no reading arrived` warning on top of it was noise. Once it is connected again and still sends nothing, that
    is flagged, a tolerance after its return."""
    import logging

    clock = Clock()
    up = {"connected": True}
    arr = Arrivals("source", 5.0, clock, connected=lambda: up["connected"])
    arr.check()
    for _ in range(5):
        clock.t += 1.0
        arr.heard()
    up["connected"] = False  # unplugged
    with caplog.at_level(logging.WARNING, logger="agent.arrivals"):
        for _ in range(120):
            clock.t += 0.5
            arr.check()
        assert not arr.silent and not caplog.records
        up["connected"] = True  # back, and quiet
        clock.t += 0.5
        arr.check()
        clock.t += 4.0
        arr.check()
        assert not arr.silent  # within the tolerance of its return
        clock.t += 1.5
        arr.check()
    assert arr.silent
    assert [r.getMessage() for r in caplog.records] == ["source: no reading arrived for 6 s: degraded (no readings arriving)"]


def test_an_outage_is_not_taken_for_the_sources_pace() -> None:
    """A serial adapter pulled for an hour and plugged back: its first reading after the return measures from the
    return, not from the last reading before the outage. Measured from before, the hour became an arrival gap, the
    tolerance three hours, and a source that then stayed quiet while connected looked healthy for hours."""
    clock = Clock()
    up = {"connected": True}
    arr = Arrivals("source", 10.0, clock, connected=lambda: up["connected"])
    arr.check()
    for _ in range(60):  # a reading a second
        clock.t += 1.0
        arr.heard()
        arr.check()
    up["connected"] = False
    for _ in range(3600):  # pulled for an hour
        clock.t += 1.0
        arr.check()
    up["connected"] = True
    clock.t += 1.0
    arr.heard()  # one reading after the return, then nothing
    assert arr.tolerance_s() == 10.0
    for _ in range(30):
        clock.t += 1.0
        arr.check()
    assert arr.silent


def test_a_modbus_asset_is_judged_at_its_own_devices_poll_period_not_the_slowest_on_the_source() -> None:
    """Two assets on one Modbus source: a meter polled every minute beside a drive polled every second. The drive's
    asset was given the minute as its floor, so a drive that stopped answering showed `no readings arriving` only
    after 3 minutes instead of after MAX_HOLD_S."""
    from agent.counters import Counters
    from agent.modbus_config import ModbusSettings
    from agent.settings import ModbusSourceSettings
    from agent.sources import expected_interval
    from agent.sources.modbus import ModbusSource

    modbus = ModbusSettings.model_validate({
        "buses": {"plc": {"kind": "tcp", "host": "127.0.0.1", "tcp_port": 5020}},
        "devices": {"meter": {"bus": "plc", "unit": 1, "poll_s": 60, "channels": {"v": {"address": 0}}},
                    "drive": {"bus": "plc", "unit": 2, "poll_s": 1, "channels": {"w": {"address": 0}}}}})
    source = ModbusSource(ModbusSourceSettings(), modbus, Counters())
    assert expected_interval(source, {"drive"}) == 1
    assert expected_interval(source, {"meter"}) == 60
    assert expected_interval(source, {"meter", "drive"}) == 60
    assert expected_interval(source, set()) == 60  # the whole source (one asset: every device)
    from agent.arrivals import watch_arrivals
    from agent.assets import Asset, Feed
    from agent.messages import Messages
    from agent.settings import Settings

    assets = [Asset(aid, Settings(), Path("/nonexistent"), Counters(), Messages("gw", 0.0), sensors={sensor})
              for aid, sensor in (("press", "drive"), ("line", "meter"))]
    assert watch_arrivals(assets, [Feed(source, assets=("press", "line"))]) == {"press", "line"}
    press, line = (a.arrivals for a in assets)
    assert press is not None and line is not None
    assert press.interval == 1 and line.interval == 60  # each asset's floor: its own devices' poll period
    clock = Clock()
    arr = Arrivals("asset drive", 5.0, clock, expected_s=press.interval)
    arr.check()
    for _ in range(3):
        clock.t += 1.0
        arr.heard()
    clock.t += 5.5  # the drive stops answering
    arr.check()
    assert arr.silent
