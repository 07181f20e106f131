"""End to end over a real pty: the demo recording sent line by line into a serial port gives the same alerts as
the replay source for the same file."""

from __future__ import annotations

import threading
import time

from agent.bundled import demo_recording_path
from agent.counters import Counters
from agent.sources.replay import read_recording
from tests.conftest import Pty, agent_env, run_agent, start_agent, wait_for

CHANNELS = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
            "Voltage", "Volume Flow RateRMS"]


def _alerts(rec) -> list[tuple[str, str, float]]:
    """Alert transitions in order of raising, each message once (delivery is at-least-once: dedupe on id)."""
    unique = {a["id"]: a for a in rec.on("alerts")}.values()
    return [(a["state"], a["window_end"], round(a["score"], 6)) for a in sorted(unique, key=lambda a: a["seq"])]


def test_serial_stream_alerts_like_the_replay(tmp_path, live_broker, recorder, agents):
    readings = list(read_recording(demo_recording_path(), Counters()))

    ref = recorder("edge/test-gw/alerts")
    r = run_agent(agent_env(tmp_path / "replay", live_broker.port))
    assert r.returncode == 0, r.stderr
    wait_for(lambda: any(a["state"] == "cleared" for a in ref.on("alerts")), what="replay alerts")
    expected = _alerts(ref)
    ref.close()

    pty = Pty()
    link = tmp_path / "ttyUSB-pump"
    link.symlink_to(pty.path)
    rec = recorder("edge/test-gw/#")
    env = agent_env(
        tmp_path / "serial", live_broker.port, EDGE_AGENT_SOURCE__KIND="serial", EDGE_AGENT_SOURCE__PORT=str(link),
        EDGE_AGENT_SOURCE__FORMAT="csv", EDGE_AGENT_SOURCE__CHANNELS=",".join(["ts", *CHANNELS]),
        EDGE_AGENT_SOURCE__SENSOR="replay", EDGE_AGENT_STATS_INTERVAL_S="1",
    )
    a = start_agent(env, tmp_path)
    agents.append(a)
    try:
        wait_for(lambda: any(s.get("source", {}).get("state") == "connected" for s in rec.on("status")), timeout=30,
                 what="serial source connected")

        def write() -> None:
            pty.write(b"\n")  # an empty first fragment is never a line (a whole one after a quiet open is kept)
            for rd in readings:
                line = ",".join([repr(rd.ts), *(repr(rd.values[c]) for c in CHANNELS)]) + "\n"
                pty.write(line.encode())

        w = threading.Thread(target=write, daemon=True)
        w.start()
        w.join(60)
        assert not w.is_alive()
        wait_for(lambda: any(s["readings_in"] >= len(readings) for s in rec.on("stats")), timeout=60,
                 what="every line read")
        got = wait_for(lambda: len(_alerts(rec)) >= len(expected) and _alerts(rec), timeout=30, what="the alerts")
        assert got == expected, (got, expected, a.log[-3000:])
        assert a.stop() == 0
    finally:
        pty.unplug()
    assert _alerts(rec) == expected
    total = sum(s["readings"] for s in rec.on("summary"))
    assert total == len(readings)


BAUD = 115200
BURST = 50


def test_lines_without_timestamps_in_bursts_are_all_accepted(tmp_path, live_broker, recorder, agents):
    """Issue 13: lines of one read shared one receipt time and all but one were refused as duplicate_ts."""
    readings = list(read_recording(demo_recording_path(), Counters()))
    pty = Pty()
    rec = recorder("edge/test-gw/#")
    env = agent_env(
        tmp_path / "state", live_broker.port, EDGE_AGENT_SOURCE__KIND="serial", EDGE_AGENT_SOURCE__PORT=pty.path,
        EDGE_AGENT_SOURCE__FORMAT="csv",  # the columns come from the header line, which has no ts column
        EDGE_AGENT_SOURCE__BAUDRATE=str(BAUD), EDGE_AGENT_STATS_INTERVAL_S="1",
    )
    a = start_agent(env, tmp_path)
    agents.append(a)
    try:
        wait_for(lambda: any(s.get("source", {}).get("state") == "connected" for s in rec.on("status")), timeout=30,
                 what="serial source connected")
        pty.write(b"\n")  # an empty first fragment is never a line (a whole one after a quiet open is kept)
        pty.write((",".join(CHANNELS) + "\n").encode())  # the file's 1,146 lines: this header and 1,145 rows
        for i in range(0, len(readings), BURST):
            burst = b"".join(
                (",".join(repr(rd.values[c]) for c in CHANNELS) + "\n").encode() for rd in readings[i:i + BURST]
            )
            pty.write(burst)  # one write: the agent reads the burst in one or a few reads
            time.sleep(len(burst) * 10 / BAUD)  # the time these bytes take on a 115200 baud line (8N1)
        wait_for(lambda: any(s["readings_in"] >= len(readings) for s in rec.on("stats")), timeout=60,
                 what="every line read")
        assert a.stop() == 0, a.log[-3000:]
    finally:
        pty.unplug()
    summaries = rec.on("summary")
    assert summaries and summaries[-1]["final"] is True
    rejected: dict[str, int] = {}
    for s in summaries:
        for reason, n in s["rejected"].items():
            rejected[reason] = rejected.get(reason, 0) + n
    assert rejected == {}, rejected
    assert sum(s["readings"] for s in summaries) == len(readings) == 1145
    assert "duplicate_ts" not in rec.on("stats")[-1]["rejected"]


def test_a_device_with_the_wrong_terminator_makes_the_status_degraded(tmp_path, live_broker, recorder, agents):
    """Issue 12 item 11: CR-only lines with LF configured gave zero readings while the status said online."""
    pty = Pty()
    rec = recorder("edge/test-gw/#")
    env = agent_env(
        tmp_path / "serial", live_broker.port, EDGE_AGENT_SOURCE__KIND="serial", EDGE_AGENT_SOURCE__PORT=pty.path,
        EDGE_AGENT_SOURCE__FORMAT="csv", EDGE_AGENT_SOURCE__CHANNELS=",".join(["ts", *CHANNELS]),
        EDGE_AGENT_SOURCE__MAX_LINE_BYTES="512",
    )
    a = start_agent(env, tmp_path)
    agents.append(a)
    try:
        wait_for(lambda: any(s.get("source", {}).get("state") == "connected" for s in rec.on("status")), timeout=30,
                 what="serial source connected")
        readings = list(read_recording(demo_recording_path(), Counters()))[:40]
        for rd in readings:
            pty.write((",".join([repr(rd.ts), *(repr(rd.values[c]) for c in CHANNELS)]) + "\r").encode())
        st = wait_for(lambda: next((s for s in rec.on("status") if s["state"] == "degraded"), None), timeout=30,
                      what="status degraded")
        assert st["reasons"] == ["no line terminator in 1024 bytes (the data has CR: EDGE_AGENT_SOURCE__TERMINATOR=cr?)"]
        assert a.stop() == 0
    finally:
        pty.unplug()
