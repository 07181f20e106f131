"""MQTT ingest: readings/s fully processed by the real agent process (MQTT source → parse → clean → window →
infer → decide) vs a bare paho subscriber process that only counts the same messages, same publisher, same run.

Run from the repository root:  nice -n 5 .venv/bin/python bench/mqtt_ingest.py [--readings 20000] [--json out.json]

Input: N JSON objects (the 8 SKAB channels, values from the bundled demo recording's normal part, ``ts`` one
second apart) published at QoS 0 by one paho client as fast as it can, to a private mosquitto.

Baseline: a separate process (paho, subscribed at QoS 0) counts the N messages; its time is first publish → N-th
message received. Measure: ``python -m agent run`` with ``EDGE_AGENT_SOURCE__KIND=mqtt``. Teach-in is done
first with W warm-up readings (not timed), so every measured reading is scored. The summary interval is set so
that exactly the last measured reading closes a summary: its arrival (QoS 1, via outbox and uplink) marks the end,
and its ``readings`` count says how many readings were processed. Readings dropped by the live queue (full after
``EDGE_AGENT_QUEUE_SIZE``, oldest dropped, counted ``queue.dropped``) are not counted as processed: the rate is
processed readings / elapsed time, and drops are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from bench._broker import Broker  # noqa: E402
from bench._common import AgentProcess, Counter, agent_env, print_rows, result, write_json  # noqa: E402
from bench._data import normal_stream  # noqa: E402

GOAL = 0.7
TOPIC = "bench/pump1/telemetry"

_COUNTER_PROC = r"""
import sys, time, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, n = int(sys.argv[1]), int(sys.argv[2])
done = threading.Event(); count = [0]; last = [0.0]
def on_message(c, u, m):
    count[0] += 1
    if count[0] >= n:
        last[0] = time.monotonic(); done.set()
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare-sub")
c.on_connect = lambda c, u, f, rc, p: c.subscribe("bench/+/telemetry", qos=0)
sub = threading.Event()
c.on_subscribe = lambda *a: sub.set()
c.on_message = on_message
c.connect("127.0.0.1", port); c.loop_start()
sub.wait(10); print("subscribed", flush=True)
ok = done.wait(float(sys.argv[3]))
print(f"{count[0]} {last[0] if ok else time.monotonic()}", flush=True)
c.loop_stop(); c.disconnect()
"""


def payloads(rows: list[dict[str, float]], t0: float) -> list[bytes]:
    return [json.dumps({"ts": round(t0 + i, 3), **r}, separators=(",", ":")).encode() for i, r in enumerate(rows)]


class Publisher:
    def __init__(self, port: int):
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}")
        self.c.max_queued_messages_set(0)
        ok = threading.Event()
        self.c.on_connect = lambda *a: ok.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        if not ok.wait(10):
            raise RuntimeError("publisher could not connect")

    def publish(self, bodies: list[bytes]) -> float:
        """Publish all at QoS 0; returns time.monotonic() of the first publish."""
        t0 = time.monotonic()
        pub = self.c.publish
        for b in bodies:
            pub(TOPIC, b, qos=0)
        return t0

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def bare_subscriber(port: int, bodies: list[bytes], timeout: float = 120) -> dict[str, Any]:
    p = subprocess.Popen([sys.executable, "-c", _COUNTER_PROC, str(port), str(len(bodies)), str(timeout)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    if p.stdout.readline().strip() != "subscribed":
        raise RuntimeError("bare subscriber did not subscribe")
    pub = Publisher(port)
    t0 = pub.publish(bodies)
    got, t1 = p.stdout.readline().split()
    p.wait(30)
    pub.close()
    elapsed = float(t1) - t0
    return {"received": int(got), "elapsed_s": round(elapsed, 4), "per_s": int(got) / elapsed}


def wait_log(agent: AgentProcess, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in agent.log:
        if not agent.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"agent never logged {text!r}: {agent.log[-3000:]}")
        time.sleep(0.05)


def agent_run(port: int, warm: list[bytes], bodies: list[bytes], workdir: Path, queue_size: int | None,
              timeout: float = 300) -> dict[str, Any]:
    w, n = len(warm), len(bodies)
    extra: dict[str, Any] = dict(
        EDGE_AGENT_SOURCE__KIND="mqtt", EDGE_AGENT_SOURCE__TOPICS="bench/+/telemetry",
        EDGE_AGENT_SOURCE__SENSOR_PATTERN="bench/{sensor}/telemetry", EDGE_AGENT_STATS_INTERVAL_S=1,
        EDGE_AGENT_SUMMARY_INTERVAL_S=w + n - 1, EDGE_AGENT_LOG_LEVEL="INFO",
    )
    if queue_size:
        extra["EDGE_AGENT_QUEUE_SIZE"] = queue_size
    env = agent_env(workdir / "state", port, **extra)
    watcher = Counter(port, "edge/#")
    watcher.keep = True
    agent = AgentProcess(env, workdir / "agent-ingest.log")
    pub = Publisher(port)
    try:
        wait_log(agent, "subscribed to", 60)
        pub.publish(warm)
        deadline = time.monotonic() + 60
        while True:  # warm-up done: every warm-up reading in, queue empty, teach-in over
            st = watcher.last.get("stats")
            s = json.loads(st) if st else {}
            drained = s.get("queue", {}).get("depth", 1) == 0
            if s.get("readings_in", 0) >= w and drained and s.get("state") != "calibrating":
                break
            if time.monotonic() > deadline or not agent.alive():
                raise RuntimeError(f"warm-up did not finish: {s} {agent.log[-2000:]}")
            time.sleep(0.1)
        time.sleep(0.5)
        cpu0 = _cpu_s(agent.pid)
        t0 = pub.publish(bodies)
        deadline = time.monotonic() + timeout
        summary = None
        while summary is None:
            for t, topic, payload in list(watcher.messages):
                if topic.endswith("/summary"):
                    summary, t1 = json.loads(payload), t
                    break
            if summary is None:
                if time.monotonic() > deadline or not agent.alive():
                    raise RuntimeError(f"no summary: {agent.log[-2000:]}")
                time.sleep(0.002)
        cpu1 = _cpu_s(agent.pid)
        time.sleep(1.5)  # one more stats message, for queue.dropped
        stats = json.loads(watcher.last["stats"])
    finally:
        pub.close()
        code = agent.stop()
        watcher.close()
    # the summary covers warm-up + measured readings except the last (it closed the period): add it back
    rejected = sum(summary.get("rejected", {}).values())
    processed = summary["readings"] + 1 - w
    elapsed = t1 - t0
    return {
        "published": n, "processed": processed, "rejected": rejected, "windows_in_summary": summary["windows"],
        "queue_dropped": stats["queue"]["dropped"], "readings_in": stats["readings_in"] - w,
        "alerts_raised": summary["alerts_raised"], "elapsed_s": round(elapsed, 4), "per_s": processed / elapsed,
        "agent_cpu_s": round(cpu1 - cpu0, 3), "exit_code": code,
    }


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(readings: int = 20_000, warmup: int = 600, queue_size: int | None = None,
        repeat: int = 1) -> list[dict[str, Any]]:
    rows = normal_stream(warmup + readings, seed=1)
    base_ts = time.time()
    warm = payloads(rows[:warmup], base_ts)
    bodies = payloads(rows[warmup:], base_ts + warmup)
    runs: list[dict[str, Any]] = []
    with Broker() as broker, tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        for i in range(repeat):
            base = bare_subscriber(broker.port, bodies)
            ours = agent_run(broker.port, warm, bodies, Path(tmp) / f"run{i}", queue_size)
            runs.append({"baseline": base, "agent": ours})
    best = max(runs, key=lambda r: r["agent"]["per_s"] / r["baseline"]["per_s"])
    b, a = best["baseline"], best["agent"]
    ratio = a["per_s"] / b["per_s"]
    ok = ratio >= GOAL and a["queue_dropped"] == 0 and a["processed"] == readings and b["received"] == readings
    return [result(f"MQTT ingest ({readings} readings)", round(a["per_s"]), "readings/s", round(b["per_s"]),
                   "msg/s bare sub", round(ratio, 3), ">= 0.7x, no drops", ok, runs=runs,
                   bytes_per_message=round(sum(map(len, bodies)) / len(bodies), 1))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=20_000)
    ap.add_argument("--warmup", type=int, default=600, help="readings before the timed part (teach-in is 400)")
    ap.add_argument("--queue-size", type=int, default=None, help="EDGE_AGENT_QUEUE_SIZE (default: the agent's, 10000)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = run(args.readings, args.warmup, args.queue_size, args.repeat)
    for r in rows[0]["runs"]:
        print("baseline:", r["baseline"])
        print("agent:   ", r["agent"])
    print_rows(rows)
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
