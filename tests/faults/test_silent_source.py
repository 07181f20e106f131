"""A live source that delivers nothing must not look healthy: a serial port (a real pty) that opens and stays quiet
makes the status ``degraded: no readings arriving`` after ``MAX_HOLD_S``; readings clear it, and their silence
brings it back. A slow sensor is not flagged at its own pace once two of its readings came (agent/arrivals.py).
"""

from __future__ import annotations

import time

from tests.conftest import Pty, start_agent, wait_for
from tests.faults.conftest import BASE, agent_env

SILENT = "no readings arriving"


def _env(tmp_path, port, pty, hold_s):
    return agent_env(tmp_path / "state", port, EDGE_AGENT_MODEL__PATH="generic", EDGE_AGENT_SOURCE__KIND="serial",
                     EDGE_AGENT_SOURCE__PORT=pty.path, EDGE_AGENT_SOURCE__FORMAT="csv",
                     EDGE_AGENT_SOURCE__CHANNELS="a,b", EDGE_AGENT_CLEANING__MAX_HOLD_S=str(hold_s))


def _connected(rec):
    return next((s for s in rec.on("status") if s.get("source", {}).get("state") == "connected"), None)


def test_a_quiet_serial_port_makes_the_status_say_no_readings_arriving(tmp_path, live_broker, recorder, agents):
    rec = recorder(f"{BASE}/#")
    pty = Pty()
    a = start_agent(_env(tmp_path, live_broker.port, pty, 1.0), tmp_path)
    agents.append(a)
    try:
        wait_for(lambda: _connected(rec), timeout=30, what="serial source connected")
        silent = wait_for(lambda: next((s for s in rec.on("status") if s["state"] == "degraded"), None), timeout=20,
                          what="status degraded while the port stays quiet")
        assert silent["reasons"] == [SILENT] and silent["source"]["state"] == "connected", silent
        assert "no reading arrived for" in a.log

        # readings arrive: the reason clears (the generic detector's teach-in runs)
        t_feed = time.monotonic()
        pty.write(b"\n")  # the first fragment after an open is dropped
        for i in range(10):
            pty.write(f"{i},{2 * i}\n".encode())
            time.sleep(0.1)
        well = wait_for(lambda: next((s for s in rec.since(t_feed, "status") if s["state"] == "calibrating"), None),
                        timeout=20, what="status well again once readings arrive")
        assert "reasons" not in well, well
        assert "readings arriving again" in a.log

        # and they stop: the reason comes back
        t_stop = time.monotonic()
        again = wait_for(lambda: next((s for s in rec.since(t_stop, "status") if SILENT in s.get("reasons", [])),
                                      None), timeout=20, what="no readings arriving after they stopped")
        assert again["state"] == "degraded", again
    finally:
        pty.unplug()
    assert a.stop() == 0, a.log[-3000:]


def test_a_slow_sensor_is_not_flagged_at_its_own_pace(tmp_path, live_broker, recorder, agents):
    """A sensor reporting every 1.5 s with MAX_HOLD_S = 0.5: after its first two readings the tolerance is three of
    its gaps, so its pace never makes it ``no readings arriving``; its silence still does."""
    rec = recorder(f"{BASE}/#")
    pty = Pty()
    a = start_agent(_env(tmp_path, live_broker.port, pty, 0.5), tmp_path)
    agents.append(a)
    period = 1.5
    try:
        wait_for(lambda: _connected(rec), timeout=30, what="serial source connected")
        pty.write(b"\n")
        pty.write(b"1,1\n")
        time.sleep(period)
        pty.write(b"2,2\n")
        t_paced = time.monotonic() + 0.5  # the second reading taken
        for i in range(3, 11):
            time.sleep(period)
            pty.write(f"{i},{i}\n".encode())
        t_end = time.monotonic()
        paced = rec.since(t_paced, "status")
        assert not [s for s in paced if SILENT in s.get("reasons", [])], paced
        assert wait_for(lambda: any(s["state"] == "calibrating" for s in rec.on("status")), timeout=5,
                        what="a status while it reports")
        # silence longer than three of its intervals: flagged
        gone = wait_for(lambda: next((s for s in rec.since(t_end, "status") if SILENT in s.get("reasons", [])), None),
                        timeout=20, what="no readings arriving once it stopped")
        assert gone["state"] == "degraded"
        assert time.monotonic() - t_end >= 3 * period - 0.5  # not at MAX_HOLD_S: at its own pace
    finally:
        pty.unplug()
    assert a.stop() == 0, a.log[-3000:]


def test_a_source_that_sends_in_clusters_is_judged_by_the_quiet_between_them(tmp_path, live_broker, recorder, agents):
    """3 lines 0.1 s apart every 1.5 s with MAX_HOLD_S 0.5: most gaps are 0.1 s, the pace is 1.5 s. A median of the
    gaps flagged every quiet stretch for as long as it ran (7 degraded statuses in 6 periods)."""
    rec = recorder(f"{BASE}/#")
    pty = Pty()
    a = start_agent(_env(tmp_path, live_broker.port, pty, 0.5), tmp_path)
    agents.append(a)
    try:
        wait_for(lambda: _connected(rec), timeout=30, what="serial source connected")
        pty.write(b"\n")  # the first fragment after an open is dropped
        t0 = 0.0
        for k in range(12):
            for j in range(3):
                pty.write(f"{k},{j}\n".encode())
                time.sleep(0.1)
            if k == 3:
                t0 = time.monotonic()  # from the fourth cluster on, its pace is known
            time.sleep(1.3)
        flagged = [s for s in rec.since(t0, "status") if SILENT in s.get("reasons", [])]
        assert not flagged, f"{len(flagged)} statuses said {SILENT!r} at the source's own pace"
    finally:
        pty.unplug()
    a.stop()


def test_an_unplugged_port_is_reported_disconnected_not_also_silent(tmp_path, live_broker, recorder, agents):
    """The serial adapter is pulled: the source's `disconnected` warning says it; the silence warnings (the asset's
    `no reading arrived`, the sensor's `silent … its channels are stale`) came on top of it as noise. Plugged back
    in and still quiet, a connected source that sends nothing is flagged again."""
    rec = recorder(f"{BASE}/#")
    link = tmp_path / "usb-FTDI_FT232R_USB_UART_A10KXYZ1-if00-port0"
    plugged = [Pty()]
    link.symlink_to(plugged[0].path)
    env = _env(tmp_path, live_broker.port, plugged[0], 0.5)
    env.update(EDGE_AGENT_SOURCE__PORT=str(link), EDGE_AGENT_SOURCE__RECONNECT_MIN_S="0.2",
               EDGE_AGENT_SOURCE__RECONNECT_MAX_S="0.5")
    a = start_agent(env, tmp_path)
    agents.append(a)
    try:
        wait_for(lambda: _connected(rec), timeout=30, what="serial source connected")
        plugged[0].write(b"\n")  # the first fragment after an open is dropped
        for i in range(20):
            plugged[0].write(f"{i},{2 * i}\n".encode())
            time.sleep(0.1)
        wait_for(lambda: any(s["state"] == "calibrating" for s in rec.on("status")), timeout=20,
                 what="readings arriving")
        plugged[0].unplug()
        link.unlink()
        wait_for(lambda: ": disconnected (" in a.log, timeout=20, what="the source's disconnected warning")
        at_unplug = a.log.index(": disconnected (")
        # the tolerance is three of the longest recent gaps (the wait for the first reading included): well past it
        time.sleep(6.0)
        quiet = a.log[at_unplug:]
        assert "no reading arrived for" not in quiet and "silent for more than" not in quiet, quiet
        assert a.alive(), a.log[-3000:]

        plugged.append(Pty())  # plugged back in, and nothing comes
        link.symlink_to(plugged[1].path)
        wait_for(lambda: "no reading arrived for" in a.log, timeout=30,
                 what="a connected source that sends nothing flagged again")
    finally:
        for p in plugged:
            p.unplug()
    assert a.stop() == 0, a.log[-3000:]
