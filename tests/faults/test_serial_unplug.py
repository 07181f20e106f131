"""Serial adapter unplugged and plugged back in during the stream, through the real agent process: the status shows
``source disconnected`` while it is gone, the readings resume behind the same by-id link, the status recovers,
and the hole in the data is counted (``gaps.time_gap``, ``source.reconnects``).

The adapter is a pty pair (the test writes the sensor's lines into the master); unplugging closes both ends and
removes the link, as udev does; plugging in creates a new pty and points the link at it atomically.
"""

from __future__ import annotations

import os
import signal
import time

from tests.conftest import Pty, start_agent, wait_for
from tests.faults.conftest import agent_env, BASE, demo_rows, taught_state

# a machine without NTP may add this reason to a live source's status: it is the machine's, not the test's
MACHINE_REASONS = {"clock not synchronised"}
CHANNELS = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
            "Voltage", "Volume Flow RateRMS"]


def csv_lines(t0: int, first: int, count: int) -> bytes:
    """Demo rows ``first..first+count`` as the device sends them: epoch ts, then the 8 channels."""
    _, rows = demo_rows()
    out = []
    for i in range(first, first + count):
        values = rows[i].split(";")[1:9]
        out.append(",".join([str(t0 + i), *values]))
    return ("\n".join(out) + "\n").encode()


def feed(pty: Pty, data: bytes, chunk_lines: int = 20) -> None:
    """Write line by line in small bursts, as a device would (not all at once into the pty buffer)."""
    lines = data.splitlines(keepends=True)
    for i in range(0, len(lines), chunk_lines):
        pty.write(b"".join(lines[i:i + chunk_lines]))
        time.sleep(0.01)


def test_serial_unplug_and_replug_during_the_stream(tmp_path, live_broker, recorder, taught, agents):
    rec = recorder(f"{BASE}/#")
    state = taught_state(taught, tmp_path / "state")
    link = tmp_path / "usb-FTDI_FT232R_USB_UART_A10KXYZ1-if00-port0"
    plugged = [Pty()]
    link.symlink_to(plugged[0].path)
    env = agent_env(state, live_broker.port, EDGE_AGENT_SOURCE__KIND="serial", EDGE_AGENT_SOURCE__PORT=link,
                    EDGE_AGENT_SOURCE__FORMAT="csv", EDGE_AGENT_SOURCE__CHANNELS=",".join(["ts", *CHANNELS]),
                    EDGE_AGENT_SOURCE__TIMESTAMP_FIELD="ts", EDGE_AGENT_SOURCE__SENSOR="pump-1",
                    EDGE_AGENT_SOURCE__RECONNECT_MIN_S="0.2", EDGE_AGENT_SOURCE__RECONNECT_MAX_S="0.5",
                    EDGE_AGENT_STATS_INTERVAL_S="1", EDGE_AGENT_MQTT__KEEPALIVE_S="5")
    a = start_agent(env, tmp_path)
    agents.append(a)
    try:
        def stats(pred):
            return next((s for s in reversed(rec.on("stats")) if pred(s)), None)

        wait_for(lambda: stats(lambda s: s["source"]["state"] == "connected") or not a.alive(), timeout=30,
                 what="serial source connected")
        assert a.alive(), a.log
        t0 = int(time.time())
        feed(plugged[0], b"\n" + csv_lines(t0, 0, 200))  # "\n": the first fragment after an open is dropped
        wait_for(lambda: stats(lambda s: s["readings_in"] >= 200), timeout=30, what="200 readings before the unplug")
        st = wait_for(lambda: next((s for s in reversed(rec.on("status")) if s["state"] != "offline"), None),
                      what="status")
        assert "source disconnected" not in st.get("reasons", []), st

        # unplug: both ends closed, the by-id link removed
        plugged[0].unplug()
        link.unlink()
        gone = wait_for(lambda: next((s for s in rec.on("status") if "source disconnected" in s.get("reasons", [])), None),
                        timeout=20, what="status degraded: source disconnected")
        assert gone["state"] == "degraded" and gone["source"]["state"] == "disconnected", gone
        time.sleep(1.5)  # a few reconnect attempts against the missing link
        assert a.alive(), a.log
        n_status = len(rec.on("status"))

        # plug back in: a new pty behind the same link, the stream goes on 60 s of data later
        plugged.append(Pty())
        tmp_link = tmp_path / "link.tmp"
        tmp_link.symlink_to(plugged[1].path)
        os.replace(tmp_link, link)
        wait_for(lambda: stats(lambda s: s["source"]["state"] == "connected" and s["source"]["reconnects"] >= 1),
                 timeout=20, what="serial source connected again")
        feed(plugged[1], b"\n" + csv_lines(t0 + 60, 200, 200))
        back = wait_for(lambda: stats(lambda s: s["readings_in"] >= 400 and s["gaps"]), timeout=30,
                        what="readings resumed after the replug")
        assert back["source"] == {"kind": "serial", "state": "connected", "reconnects": 1, "dropped_at_close": 0,
                                  "errors": {}}, back["source"]
        assert back["gaps"].get("time_gap", 0) >= 1, back["gaps"]  # the hole in the data is counted
        assert back["windows"] > 0
        # the status is well again (apart from what the machine's clock says)
        def recovered(s: dict) -> bool:
            reasons = s.get("reasons", [])
            return set(reasons) <= MACHINE_REASONS and s["state"] == ("degraded" if reasons else "online")

        well = wait_for(lambda: next((s for s in rec.on("status")[n_status:] if recovered(s)), None), timeout=20,
                        what="status recovered")
        assert well["source"]["state"] == "connected", well
    finally:
        for p in plugged:
            p.unplug()
    assert a.stop(signal.SIGTERM) == 0, a.log
    log = a.log
    assert log.count("disconnected") >= 1 and "connected again" in log, log
    summaries = rec.on("summary")
    assert summaries and summaries[-1]["final"]
    assert sum(s["readings"] for s in summaries) == 400, [s["readings"] for s in summaries]
