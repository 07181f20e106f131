"""Outbox at its cap while the broker is down: the drop policy holds (summaries first, alerts kept), the drops are
counted and published in the stats, the status says ``outbox dropping`` while it drops, and the agent keeps scoring.

(``tests/integration/test_control.py::test_outbox_full_drops_summaries_first_and_counts`` checks the order of the
drops in the database after a run; this test is about what the control room sees, live.)
"""

from __future__ import annotations

import os
import re
import signal
import time

from tests.conftest import start_agent, wait_for
from tests.faults.conftest import agent_env, ALERT_LINE, SUMMARY_LINE, fault_recording, outbox_snapshot, taught_state

DROPPED_SUMMARY = "outbox full: dropped the oldest summary"


def test_outbox_cap_drops_summaries_first_counts_publishes_and_keeps_scoring(
    tmp_path, durable_broker, durable_recorder, taught, agents
):
    state = taught_state(taught, tmp_path / "state")
    rec = fault_recording(tmp_path / "fault.csv", copies=1)
    durable_broker.stop()
    env = agent_env(state, durable_broker.port, EDGE_AGENT_SOURCE__PATH=rec, EDGE_AGENT_SOURCE__LOOP="true",
                    EDGE_AGENT_SOURCE__SPEED="50", EDGE_AGENT_OUTBOX__MAX_ROWS="10",
                    EDGE_AGENT_SUMMARY_INTERVAL_S="10", EDGE_AGENT_STATS_INTERVAL_S="1",
                    EDGE_AGENT_MQTT__KEEPALIVE_S="5")
    a = start_agent(env, tmp_path)
    agents.append(a)
    try:
        # broker down: the outbox fills with summaries (one per 10 s of data) and two alerts, then drops
        wait_for(lambda: a.log.count(DROPPED_SUMMARY) >= 10 and len(ALERT_LINE.findall(a.log)) >= 2 or not a.alive(),
                 timeout=60, what="10 summaries dropped and 2 alerts raised while the broker is down")
        assert a.alive(), a.log
        check, rows, _ = outbox_snapshot(state)
        assert check == "ok"
        assert len(rows) <= 10
        assert "alert" in [k for k, _ in rows]
        log_at_restart = a.log
    finally:
        durable_broker.start()

    # while dropping, the agent kept scoring: every summary period logged meanwhile has scored windows
    dropping_part = log_at_restart[log_at_restart.index(DROPPED_SUMMARY):]
    windows = [int(m.group(5)) for m in SUMMARY_LINE.finditer(dropping_part)]
    assert len(windows) >= 5 and all(w > 0 for w in windows), windows

    # the birth after the outage says why the agent is not well: it is dropping
    st = wait_for(lambda: next((s for s in durable_recorder.on("status") if s["state"] != "offline"), None),
                  timeout=60, what="status after the broker came back")
    assert st["state"] == "degraded", st
    assert "outbox dropping" in st["reasons"], st
    # the drops are counted and published: summaries only, alerts never
    stats = wait_for(lambda: next((s for s in durable_recorder.on("stats") if s["outbox"]["dropped"]), None),
                     timeout=30, what="stats with the drop counts")
    assert stats["outbox"]["dropped"].get("summary", 0) > 0, stats["outbox"]
    assert "alert" not in stats["outbox"]["dropped"], stats["outbox"]
    # once the outbox drains, dropping stops and the status says so
    wait_for(lambda: any("outbox dropping" not in s.get("reasons", []) for s in durable_recorder.on("status")[1:]
                         if s["state"] != "offline"), timeout=30, what="status without 'outbox dropping'")
    # it keeps scoring: the windows count keeps going up, stats after stats
    w0 = durable_recorder.on("stats")[-1]["windows"]
    wait_for(lambda: durable_recorder.on("stats")[-1]["windows"] > w0 + 100, timeout=30, what="windows going up")

    assert a.stop(signal.SIGTERM) == 0, a.log
    log = a.log
    # the published count is the count of drops (the last stats may precede the last drops: <=)
    dropped_in_log = log.count(DROPPED_SUMMARY)
    last = durable_recorder.on("stats")[-1]["outbox"]["dropped"]
    assert 0 < last.get("summary", 0) <= dropped_in_log
    assert "dropped the oldest alert" not in log
    # and every alert arrived: seq 1..n, none dropped
    _, rows, last_seq = outbox_snapshot(state)
    assert rows == []
    wait_for(lambda: {x["seq"] for x in durable_recorder.on("alerts")} >= set(range(1, last_seq + 1)), timeout=20,
             what=f"alerts seq 1..{last_seq}")
    assert last_seq == len(ALERT_LINE.findall(log)) >= 2
    assert re.search(r"connected to \S+ again", log)


def test_outbox_on_a_full_filesystem_keeps_the_agent_scoring(
    tmp_path, durable_broker, durable_recorder, taught, tiny_fs, agents
):
    """The state dir on a 1 MB filesystem that fills up while the broker is down: SQLite says "database or disk is
    full". The agent must treat it like a full outbox (drop summaries first, count the drops) and keep scoring,
    not die."""
    state = taught_state(taught, tiny_fs / "state")
    free = os.statvfs(tiny_fs).f_bavail * os.statvfs(tiny_fs).f_frsize
    (tiny_fs / "filler").write_bytes(b"\0" * (free - 200 * 1024))  # leave ~200 KB for the outbox
    rec = fault_recording(tmp_path / "fault.csv", copies=1)
    durable_broker.stop()
    env = agent_env(state, durable_broker.port, EDGE_AGENT_SOURCE__PATH=rec, EDGE_AGENT_SOURCE__LOOP="true",
                    EDGE_AGENT_SOURCE__SPEED="100", EDGE_AGENT_SUMMARY_INTERVAL_S="10",
                    EDGE_AGENT_STATS_INTERVAL_S="1", EDGE_AGENT_MQTT__KEEPALIVE_S="5")
    a = start_agent(env, tmp_path)
    agents.append(a)

    def fs_free() -> int:
        st = os.statvfs(tiny_fs)
        return st.f_bavail * st.f_frsize

    try:
        wait_for(lambda: fs_free() < 32 * 1024 or "full" in a.log or not a.alive(), timeout=60,
                 what="the filesystem under the outbox filling up")
        time.sleep(3)  # writes keep failing for a while: summaries every 0.1 s of wall time
        log = a.log
        assert "thread pipeline died" not in log, f"the agent died of a full disk instead of dropping:\n{log[-3000:]}"
        assert a.alive(), log[-3000:]
    finally:
        durable_broker.start()
    # back online: the drops are counted and published, summaries only, and the agent is still scoring
    stats = wait_for(lambda: next((s for s in durable_recorder.on("stats") if s["outbox"]["dropped"]), None),
                     timeout=30, what="stats with the drop counts")
    assert stats["outbox"]["dropped"].get("summary", 0) > 0, stats["outbox"]
    w0 = durable_recorder.on("stats")[-1]["windows"]
    wait_for(lambda: durable_recorder.on("stats")[-1]["windows"] > w0 + 100, timeout=30, what="windows going up")
    # summaries first: with a few alerts among hundreds of summaries, no alert had to go
    assert "alert" not in durable_recorder.on("stats")[-1]["outbox"]["dropped"], durable_recorder.on("stats")[-1]["outbox"]
    assert a.stop(signal.SIGTERM) == 0, a.log[-3000:]
    log = a.log
    # the delivered rows could be deleted (PUBACK) on the full disk: the outbox drained
    assert "error in on_publish" not in log, log[-3000:]
    check, rows, last_seq = outbox_snapshot(state)
    assert check == "ok"
    assert rows == [], f"{len(rows)} rows left in the outbox"
    assert {x["seq"] for x in durable_recorder.on("alerts")} >= set(range(1, last_seq + 1))
