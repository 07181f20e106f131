"""SIGTERM under full load: the agent, fed by the MQTT source faster than it can score, stops gracefully within the
unit's ``TimeoutStopSec`` (30 s) with exit 0, and nothing in flight is lost: every reading it accepted before the
stop is in the summaries (the queued ones are scored, not dropped), the final summary arrives, and every alert and
summary written to the outbox reaches the broker.

The publisher numbers the readings by their timestamp (one second of data apart, one sensor topic, QoS 1 end to
end, so the broker delivers them in order and drops none): the readings the agent accepted are a prefix of the
stream, and the summaries must count exactly ``(last period_end - first ts) + 1`` of them.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import start_agent, wait_for
from tests.faults.conftest import agent_env, demo_rows, outbox_snapshot, parse_iso, taught_state

TIMEOUT_STOP_S = 30  # systemd/edge-agent.service: TimeoutStopSec=30s
CHANNELS = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
            "Voltage", "Volume Flow RateRMS"]


class Flood:
    """Publishes demo readings to plant/pump-1/telemetry at QoS 1 as fast as the broker takes them."""

    def __init__(self, port: int, t0: int):
        _, rows = demo_rows()
        self.values = [dict(zip(CHANNELS, map(float, r.split(";")[1:9]))) for r in rows]
        self.t0 = t0
        self.sent = 0
        self.stop = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"flood-{time.monotonic_ns()}")
        self.c.max_inflight_messages_set(500)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.thread = threading.Thread(target=self._run, name="flood", daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            if len(self.c._out_messages) > 2000:  # keep paho's own queue short: the broker is the buffer
                time.sleep(0.001)
                continue
            body = json.dumps({"ts": self.t0 + i, **self.values[i % len(self.values)]})
            self.c.publish("plant/pump-1/telemetry", body, qos=1)
            i += 1
            self.sent = i

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.c.loop_stop()
        self.c.disconnect()


def test_sigterm_under_full_load_stops_in_time_and_loses_nothing(tmp_path, durable_broker, durable_recorder, taught,
                                                                 agents):
    state = taught_state(taught, tmp_path / "state")
    env = agent_env(state, durable_broker.port, EDGE_AGENT_SOURCE__KIND="mqtt",
                    EDGE_AGENT_SOURCE__TOPICS="plant/+/telemetry", EDGE_AGENT_SOURCE__SENSOR_PATTERN="plant/{sensor}/telemetry",
                    EDGE_AGENT_SOURCE__QOS="1", EDGE_AGENT_SOURCE__TIMESTAMP_FIELD="ts",
                    EDGE_AGENT_SUMMARY_INTERVAL_S="300", EDGE_AGENT_STATS_INTERVAL_S="1",
                    EDGE_AGENT_QUEUE_SIZE="100000", EDGE_AGENT_MQTT__KEEPALIVE_S="5",
                    # the spike filter (a median per channel per reading) keeps the pipeline on its per-reading path:
                    # slower than this flood, so readings wait in the queue (the batched path outruns one publisher)
                    EDGE_AGENT_CLEANING__SPIKE_WINDOW="15")
    a = start_agent(env, tmp_path)
    agents.append(a)
    wait_for(lambda: any(s["source"]["state"] == "connected" for s in durable_recorder.on("stats")) or not a.alive(),
             timeout=30, what="MQTT source subscribed")
    assert a.alive(), a.log
    time.sleep(0.5)  # the subscription is in place (SUBACK) well before the first reading
    t0 = int(time.time())
    flood = Flood(durable_broker.port, t0)
    flood.thread.start()
    try:
        # full load: the pipeline is behind, readings are waiting in the queue
        loaded = wait_for(lambda: next((s for s in durable_recorder.on("stats")
                                        if s["queue"]["depth"] >= 300 and s["windows"] > 0), None),
                          timeout=90, what="a backlog of 300 readings in the agent's queue")
        t_term = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        code = a.proc.wait(TIMEOUT_STOP_S + 30)
        stop_s = time.monotonic() - t_term
    finally:
        flood.close()
    log = a.log
    assert code == 0, log
    assert stop_s <= TIMEOUT_STOP_S, f"stopped after {stop_s:.1f} s, past TimeoutStopSec={TIMEOUT_STOP_S}s"
    assert "stopped" in log and "still in the outbox" not in log, log

    # the final summary arrives, and the summaries count every reading accepted before the stop
    wait_for(lambda: any(s["final"] for s in durable_recorder.on("summary")), timeout=20, what="final summary")
    summaries = durable_recorder.on("summary")
    ids = [s["id"] for s in summaries]
    summaries = [s for i, s in enumerate(summaries) if s["id"] not in ids[:i]]  # at-least-once: dedupe
    assert summaries[-1]["final"] is True
    assert [s for s in summaries if s["final"]] == summaries[-1:]
    assert parse_iso(summaries[0]["period_start"]) == t0, summaries[0]
    last_ts = parse_iso(summaries[-1]["period_end"])
    accepted = round(last_ts - t0) + 1
    assert sum(sum(s["rejected"].values()) for s in summaries) == 0, [s["rejected"] for s in summaries if s["rejected"]]
    assert sum(s["readings"] for s in summaries) == accepted, (
        f"{accepted} readings accepted (ts {t0}..{last_ts:.0f}) but {sum(s['readings'] for s in summaries)} summarised")
    # it was under load when stopped, and the backlog was scored, not dropped
    assert accepted >= loaded["readings_in"] >= loaded["queue"]["depth"] >= 300
    assert all(s["queue"]["dropped"] == 0 for s in durable_recorder.on("stats"))

    # everything written to the outbox reached the broker
    check, rows, last_seq = outbox_snapshot(state)
    assert check == "ok" and rows == [], rows
    if last_seq:
        wait_for(lambda: {x["seq"] for x in durable_recorder.on("alerts")} >= set(range(1, last_seq + 1)), timeout=20,
                 what=f"alerts 1..{last_seq}")
    assert len(summaries) == log.count("SUMMARY "), (len(summaries), log.count("SUMMARY "))
    wait_for(lambda: durable_recorder.on("status")[-1]["state"] == "offline", timeout=10, what="offline status")
