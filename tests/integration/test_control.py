"""Health and commands over MQTT against a real broker and the real agent process.

The agent replays the bundled recording in a loop at 50x, so it keeps scoring while the test talks to it.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.bundled import DEFAULT_MODEL, bundled_model
from tests.conftest import ROOT, Recorder, agent_env, start_agent, wait_for

BASE = "edge/test-gw"


def _running(tmp_path: Path, port: int, agents: list, **extra: Any):
    settings = {"EDGE_AGENT_SOURCE__LOOP": "true", "EDGE_AGENT_SOURCE__SPEED": "50", "EDGE_AGENT_STATS_INTERVAL_S": "1",
                "EDGE_AGENT_MQTT__KEEPALIVE_S": "5", "EDGE_AGENT_COMMANDS__BURST": "100", **extra}
    env = agent_env(tmp_path / "state", port, **settings)
    a = start_agent(env, tmp_path)
    agents.append(a)
    return a


class Commander:
    """Sends commands and collects the replies."""

    def __init__(self, port: int):
        self.replies: list[dict[str, Any]] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cmd-{uuid.uuid4().hex[:8]}")
        self.c.on_message = lambda c, u, m: self.replies.append({"topic": m.topic, **json.loads(m.payload)})
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(f"{BASE}/reply/#", qos=1)
        self.c.loop_start()
        time.sleep(0.2)

    def send(self, name: str, body: Any, raw: bytes | None = None, timeout: float = 15) -> dict[str, Any]:
        rid = body.get("request_id") if isinstance(body, dict) else None
        self.replies.clear()
        payload = raw if raw is not None else json.dumps(body)
        self.c.publish(f"{BASE}/cmd/{name}", payload, qos=1)
        return wait_for(
            lambda: next((r for r in self.replies if r["topic"].endswith(f"/reply/{name}") and r.get("request_id") == rid), None),
            timeout=timeout, what=f"reply to {name}",
        )

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def commander(live_broker):
    c = Commander(live_broker.port)
    yield c
    c.close()


def _online(rec) -> dict[str, Any]:
    return wait_for(lambda: next((s for s in reversed(rec.on("status")) if s["state"] in ("online", "calibrating")), None),
                    timeout=30, what="status online")


def _stats(rec, pred=lambda s: True, timeout: float = 20) -> dict[str, Any]:
    return wait_for(lambda: next((s for s in reversed(rec.on("stats")) if pred(s)), None), timeout=timeout, what="stats")


def test_birth_stats_and_last_will_on_kill9(tmp_path, live_broker, recorder, agents):
    rec = recorder(f"{BASE}/#")
    a = _running(tmp_path, live_broker.port, agents)
    st = _online(rec)
    for key in ("agent_version", "started_at", "config_digest", "device_id"):
        assert st[key]
    assert st["model"]["name"] == DEFAULT_MODEL and len(st["model"]["sha256"]) == 64 and st["model"]["runtime"]
    stats = _stats(rec, lambda s: s["windows"] > 0)
    for key in ("uptime_s", "readings_in", "inference_ms", "queue", "outbox", "rejected", "source", "rss_bytes",
                "cpu_s", "bytes_in", "bytes_out", "clock_synced", "feedback", "alerts"):
        assert key in stats, key
    assert stats["inference_ms"]["p50"] > 0 and stats["inference_ms"]["p99"] >= stats["inference_ms"]["p50"]
    assert stats["bytes_in"] > stats["bytes_out"] > 0
    assert stats["source"]["state"] == "connected"
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    # the broker publishes the last will: retained offline
    wait_for(lambda: rec.on("status")[-1]["state"] == "offline", timeout=20, what="last will")
    will = rec.on("status")[-1]
    assert will["reason"] == "connection lost"
    # which run died; not which alerts are open (set at start, it cannot know them: a monitor takes none from it)
    assert will.get("started_at") == st["started_at"] and "open_alerts" not in will, will


def test_birth_again_after_broker_restart(tmp_path, live_broker, recorder, agents):
    a = _running(tmp_path, live_broker.port, agents)
    rec = recorder(f"{BASE}/#")
    _online(rec)
    live_broker.stop()
    time.sleep(1)
    live_broker.start()
    rec2 = recorder(f"{BASE}/status")
    # the retained status after the restart comes from a new birth (the broker kept nothing: persistence off)
    wait_for(lambda: any(s["state"] in ("online", "calibrating", "degraded") for s in rec2.on("status")), timeout=30,
             what="birth after reconnect")
    assert a.alive()
    assert "alerts and summaries stay in the outbox" in a.log


def test_commands_ok_and_not_ok(tmp_path, live_broker, recorder, commander, agents):
    rec = recorder(f"{BASE}/#")
    a = _running(tmp_path, live_broker.port, agents)
    _online(rec)
    wait_for(lambda: any(s["state"] == "online" for s in rec.on("status")), timeout=30, what="teach-in done")

    r = commander.send("ping", {"request_id": "p1"})
    assert r["ok"] is True and r["device_id"] == "test-gw" and r["ts"]

    n = len(rec.on("stats"))
    r = commander.send("status", {"request_id": "s1"})
    assert r["ok"] is True
    wait_for(lambda: len(rec.on("stats")) > n, what="stats published on the status command")

    for name, body, raw, reason in [
        ("reboot", {"request_id": "u1"}, None, "unknown command"),
        ("ping", None, b"{not json", "not JSON"),
        ("ping", {"no": "id"}, None, "request_id"),
        ("set-threshold", {"request_id": "t0"}, None, "threshold is required"),
        ("set-threshold", {"request_id": "t1", "threshold": 1e9}, None, "outside the allowed range"),
        ("set-threshold", {"request_id": "t2", "threshold": "high"}, None, "finite number"),
        ("feedback", {"request_id": "f0", "alert_id": "nope", "label": "true_positive"}, None, "no evidence"),
        ("feedback", {"request_id": "f1", "alert_id": "x", "label": "maybe"}, None, "label must be"),
        ("reload-model", {"request_id": "m0"}, None, "path"),
    ]:
        rid = body.get("request_id") if isinstance(body, dict) else None
        r = commander.send(name, body if body is not None else {"request_id": None}, raw=raw)
        assert r["ok"] is False and reason in r["reason"], (name, r)
        assert r["request_id"] == rid

    threshold_before = _online(rec)["threshold"]
    r = commander.send("set-threshold", {"request_id": "t3", "threshold": threshold_before * 2})
    assert r["ok"] is True and r["threshold"] == pytest.approx(threshold_before * 2)
    assert json.loads((tmp_path / "state" / "overrides.json").read_text())["threshold"] == pytest.approx(threshold_before * 2)

    r = commander.send("calibrate", {"request_id": "c1"})
    assert r["ok"] is True
    wait_for(lambda: rec.on("status")[-1]["state"] == "calibrating", what="calibrating after the calibrate command")
    assert not (tmp_path / "state" / "calibration.json").exists() or a.alive()

    # the threshold set by command survives a restart
    assert a.stop() == 0
    rec3 = recorder(f"{BASE}/status")
    _running(tmp_path, live_broker.port, agents)
    st = wait_for(lambda: next((s for s in rec3.on("status") if s["state"] != "offline"), None), timeout=30, what="status")
    assert st["threshold"] == pytest.approx(threshold_before * 2)


def test_commands_can_be_turned_off(tmp_path, live_broker, recorder, agents):
    rec = recorder(f"{BASE}/#")
    _running(tmp_path, live_broker.port, agents, EDGE_AGENT_COMMANDS__ENABLED="false")
    _online(rec)
    c = Commander(live_broker.port)
    try:
        c.c.publish(f"{BASE}/cmd/ping", json.dumps({"request_id": "x"}), qos=1)
        time.sleep(2)
        assert c.replies == []
    finally:
        c.close()


def _model_copy(tmp_path: Path, version: str) -> Path:
    src = bundled_model("pump-anomaly")
    d = tmp_path / f"model-{version}"
    d.mkdir()
    shutil.copy(src, d / src.name)
    sc = json.loads(src.with_suffix(".json").read_text())
    sc["version"] = version
    (d / src.with_suffix(".json").name).write_text(json.dumps(sc))
    return d / src.name


def test_reload_model_good_broken_and_wrong_hash(tmp_path, live_broker, recorder, commander, agents):
    rec = recorder(f"{BASE}/#")
    _running(tmp_path, live_broker.port, agents, EDGE_AGENT_COMMANDS__MODEL_DIRS=str(tmp_path))
    wait_for(lambda: any(s["state"] == "online" for s in rec.on("status")), timeout=30, what="online")
    good = _model_copy(tmp_path, "9.9.9")
    sha = json.loads(good.with_suffix(".json").read_text())["sha256"]

    broken = _model_copy(tmp_path, "6.6.6")
    broken.write_bytes(b"\x00garbage" * 64)
    import hashlib

    bsha = hashlib.sha256(broken.read_bytes()).hexdigest()
    sc = json.loads(broken.with_suffix(".json").read_text())
    sc["sha256"] = bsha
    broken.with_suffix(".json").write_text(json.dumps(sc))

    r = commander.send("reload-model", {"request_id": "b", "path": str(broken), "sha256": bsha})
    assert r["ok"] is False and "refused the file" in r["reason"]
    r = commander.send("reload-model", {"request_id": "w", "path": str(good), "sha256": "0" * 64})
    assert r["ok"] is False and "expected" in r["reason"]
    r = commander.send("reload-model", {"request_id": "n", "path": str(tmp_path / "nope.tflite"), "sha256": sha})
    assert r["ok"] is False and "may load" in r["reason"]
    big_n = _model_copy(tmp_path, "5.5.5")  # its own decision.n over the configuration's bound (10000)
    sc = json.loads(big_n.with_suffix(".json").read_text())
    sc["decision"] = {**sc["decision"], "n": 10_001}
    big_n.with_suffix(".json").write_text(json.dumps(sc))
    r = commander.send("reload-model", {"request_id": "k", "path": str(big_n), "sha256": sha})
    assert r["ok"] is False and "decision.n: Input should be less than or equal to 10000" in r["reason"], r
    # the old model keeps scoring
    w0 = _stats(rec)["windows"]
    _stats(rec, lambda s: s["windows"] > w0 + 10)
    assert rec.on("status")[-1]["model"]["version"] != "9.9.9"

    r = commander.send("reload-model", {"request_id": "g", "path": str(good), "sha256": sha})
    assert r["ok"] is True and r["model"]["version"] == "9.9.9", r
    wait_for(lambda: rec.on("status")[-1]["model"]["version"] == "9.9.9", what="new version in birth")
    w1 = _stats(rec)["windows"]
    _stats(rec, lambda s: s["windows"] > w1 + 10)


def test_reload_drops_no_reading_and_sighup(tmp_path, live_broker, recorder, commander, agents):
    """A swap between two windows: every reading of the recording is in the summaries."""
    rec = recorder(f"{BASE}/#")
    env = agent_env(tmp_path / "state", live_broker.port, EDGE_AGENT_SOURCE__SPEED="50", EDGE_AGENT_STATS_INTERVAL_S="1",
                    EDGE_AGENT_COMMANDS__MODEL_DIRS=str(tmp_path))
    a = start_agent(env, tmp_path)
    agents.append(a)
    _online(rec)
    good = _model_copy(tmp_path, "2.0.0")
    sha = json.loads(good.with_suffix(".json").read_text())["sha256"]
    time.sleep(1)
    r = commander.send("reload-model", {"request_id": "g", "path": str(good), "sha256": sha})
    assert r["ok"] is True
    assert a.alive(), "the replay ended before the swap: make it longer"
    a.proc.send_signal(signal.SIGHUP)  # reloads the configured (bundled) model
    assert a.proc.wait(90) == 0, a.log
    assert "SIGHUP: reloaded" in a.log
    rows = len(bundled_model("pump-anomaly").parent.joinpath("demo", "skab-valve1-1.csv").read_text().splitlines()) - 1
    assert sum(s["readings"] for s in rec.on("summary")) == rows


def test_feedback_round_trip_to_export(tmp_path, live_broker, recorder, commander, agents):
    rec = recorder(f"{BASE}/#")
    a = _running(tmp_path, live_broker.port, agents, EDGE_AGENT_SOURCE__SPEED="200")
    wait_for(lambda: len([x for x in rec.on("alerts") if x["state"] == "raised"]) >= 2, timeout=60, what="two alerts")
    raised = [x for x in rec.on("alerts") if x["state"] == "raised"][:2]
    assert raised[0]["evidence_id"] == raised[0]["alert_id"] and raised[0]["evidence_bytes"] > 0
    r1 = commander.send("feedback", {"request_id": "1", "alert_id": raised[0]["alert_id"], "label": "true_positive", "note": "valve closed"})
    r2 = commander.send("feedback", {"request_id": "2", "alert_id": raised[1]["alert_id"], "label": "false_positive"})
    assert r1["ok"] and r2["ok"]
    assert r2["feedback"] == {"true_positive": 1, "false_positive": 1, "precision": 0.5}
    _stats(rec, lambda s: s["feedback"]["precision"] == 0.5)
    assert a.stop() == 0
    out = tmp_path / "export"
    import subprocess
    import sys

    env = agent_env(tmp_path / "state", live_broker.port)
    p = subprocess.run([sys.executable, "-m", "agent", "export-feedback", "--out", str(out)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    labels = (out / "labels.csv").read_text().splitlines()
    assert len(labels) == 3 and "valve closed" in labels[1]
    f = out / f"{raised[0]['alert_id']}.csv"
    lines = f.read_text().splitlines()
    assert lines[0].startswith("datetime;Accelerometer1RMS;") and lines[0].endswith(";anomaly")
    assert all(line.endswith(";1") for line in lines[1:])
    assert all(line.endswith(";0") for line in (out / f"{raised[1]['alert_id']}.csv").read_text().splitlines()[1:])
    # the export reads as a SKAB-format recording, as the training scripts and the replay source take it
    from agent.counters import Counters
    from agent.sources.replay import read_recording

    readings = list(read_recording(f, Counters()))
    assert len(readings) == len(lines) - 1 and readings[0].values["anomaly"] == 1.0


def test_corrupt_outbox_is_recovered_by_the_running_agent(tmp_path, live_broker, recorder):
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.db").write_bytes(b"garbage" * 1000)
    rec = recorder(f"{BASE}/#")
    from tests.conftest import run_agent

    r = run_agent(agent_env(state, live_broker.port))
    assert r.returncode == 0, r.stderr
    assert "is corrupt" in r.stderr and list(state.glob("outbox.db.corrupt-*"))
    wait_for(lambda: rec.on("summary") and rec.on("summary")[-1]["final"], what="summaries still delivered")
    assert sqlite3.connect(state / "outbox.db").execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_outbox_full_drops_summaries_first_and_counts(tmp_path, live_broker, recorder, agents):
    """Broker down, tiny outbox: summaries go, alerts stay; the drops are counted and published later."""
    live_broker.stop()
    env = agent_env(tmp_path / "state", live_broker.port, EDGE_AGENT_OUTBOX__MAX_ROWS="10",
                    EDGE_AGENT_SUMMARY_INTERVAL_S="10", EDGE_AGENT_DRAIN_TIMEOUT_S="1")
    from tests.conftest import run_agent

    try:
        r = run_agent(env)
    finally:
        live_broker.start()
    assert r.returncode == 0, r.stderr
    db = sqlite3.connect(tmp_path / "state" / "outbox.db")
    kinds = [k for (k,) in db.execute("SELECT kind FROM outbox ORDER BY id")]
    db.close()
    assert len(kinds) == 10
    assert "alert" in kinds
    assert "outbox full: dropped the oldest summary" in r.stderr
    assert "dropped the oldest alert" not in r.stderr


# -- issue 12 items 1 and 3, through the broker --------------------------------------------------------------


def test_a_threshold_set_by_command_is_in_the_retained_status_and_the_stats(tmp_path, live_broker, recorder, commander, agents):
    """The threshold set to 10x was persisted, but the retained status still showed the old one."""
    rec = recorder(f"{BASE}/#")
    a = _running(tmp_path, live_broker.port, agents)
    st = wait_for(lambda: next((s for s in reversed(rec.on("status")) if s["state"] == "online"), None), timeout=30,
                  what="online")
    assert st["overrides"] == {}
    new = st["threshold"] * 10
    r = commander.send("set-threshold", {"request_id": "t", "threshold": new})
    assert r["ok"] and r["changed"] is True
    fresh = Recorder(live_broker.port, f"{BASE}/status")  # a newcomer gets the retained status
    try:
        retained = wait_for(lambda: fresh.on("status") and fresh.on("status")[-1], what="retained status")
        assert retained["threshold"] == pytest.approx(new) and retained["overrides"] == {"threshold": pytest.approx(new)}
    finally:
        fresh.close()
    _stats(rec, lambda s: s.get("overrides") == {"threshold": pytest.approx(new)} and s["threshold"] == pytest.approx(new))
    assert "-> " in a.log and f"{new:.6g} (override, by command)" in a.log
    r = commander.send("set-threshold", {"request_id": "u", "threshold": new})
    assert r["ok"] and r["changed"] is False


def test_a_flood_of_commands_is_counted_to_the_last_one(tmp_path, live_broker, recorder, agents):
    """Issue 12: 7,459 of 10,000 pings vanished without a trace. Every ping now gets a reply or is counted."""
    rec = recorder(f"{BASE}/#")
    a = _running(tmp_path, live_broker.port, agents, EDGE_AGENT_COMMANDS__BURST="10",
                 EDGE_AGENT_COMMANDS__RATE_PER_MINUTE="60")
    _online(rec)
    c = Commander(live_broker.port)
    try:
        n = 2000
        for i in range(n):
            c.c.publish(f"{BASE}/cmd/ping", json.dumps({"request_id": i}), qos=1)

        def accounted() -> bool:
            stats = rec.on("stats")
            dropped = sum(stats[-1]["commands"]["dropped"].values()) if stats else 0
            return len({r["request_id"] for r in c.replies}) + dropped == n

        wait_for(accounted, timeout=60, what="every ping answered or counted as dropped")
        assert 10 <= len(c.replies) < 100
        assert a.log.count("commands arrive faster than they may be carried out") == 1  # once per burst
    finally:
        c.close()
