"""Alert latency through the whole agent process: from the moment a sensor publishes the reading that makes an
alert to the moment the alert message reaches a subscriber of ``edge/+/alerts`` (sensor broker hop, MQTT source
with its pacing, pipeline, outbox on SQLite, uplink QoS 1, broker hop), p50 and p99, at 100 readings/s, with
``EDGE_AGENT_SOURCE__GATHER_MS`` at its default (40) and at 0 (no pacing), alternating, same broker, same run.

Run from the repository root:  nice -n 5 .venv/bin/python bench/e2e_latency.py [--alerts 40] [--json out.json]

The publisher (a thread of this process) sends 8 channels of noise at 100 readings/s with ``ts`` = its wall clock
at publishing, and every 1.5 s a step of +1,000 noise levels on one channel for 20 readings. The agent (generic
detector, 400-reading teach-in, k = 1 of n = 1, rate limit off) raises on the first window holding the step, whose
end is the step's first reading: latency = arrival of the alert here (wall clock, same host) - the alert's
``window_end`` (milliseconds in the payload). What ``bench/alert_latency.py`` measures (window end handed to the
pipeline -> PUBACK) is the part inside the agent after the source; this adds the source's wait and both broker
hops. The baseline: a bare paho QoS 1 publish, sensor side -> subscriber, same broker (the two hops alone).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from agent.parse import timestamp  # noqa: E402
from bench._broker import Broker  # noqa: E402
from bench._common import AgentProcess, agent_env, print_rows, result, write_json  # noqa: E402

TOPIC = "bench/pump1/telemetry"
CHANNELS = ["a", "b", "c", "d", "e", "f", "g", "h"]
RATE = 100.0
STEP_EVERY = 150  # readings (1.5 s)
STEP_LEN = 20


def _client(port: int, name: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{time.monotonic_ns()}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def agent_latency(port: int, gather_ms: int, alerts: int, workdir: Path) -> dict[str, Any]:
    """Latencies (ms) of ``alerts`` alerts through an agent with this GATHER_MS."""
    env = agent_env(workdir / f"state-{gather_ms}", port, EDGE_AGENT_SOURCE__KIND="mqtt",
                    EDGE_AGENT_SOURCE__TOPICS="bench/+/telemetry", EDGE_AGENT_SOURCE__SENSOR_PATTERN="bench/{sensor}/telemetry",
                    EDGE_AGENT_SOURCE__GATHER_MS=gather_ms, EDGE_AGENT_CLOCK_SYNC_REQUIRED="false",
                    EDGE_AGENT_DECISION__K=1, EDGE_AGENT_DECISION__N=1, EDGE_AGENT_ALERTS__RATE_LIMIT_PER_HOUR=0)
    got: list[float] = []
    raised = threading.Event()

    def on_alert(c: Any, u: Any, m: Any) -> None:
        now = time.time()
        d = json.loads(m.payload)
        if d.get("state") == "raised":
            end = timestamp(d["window_end"])
            got.append((now - end) * 1000)
            raised.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-e2e-sub-{time.monotonic_ns()}")
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("edge/+/alerts", qos=1)
    sub.on_message = on_alert
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    agent = AgentProcess(env, workdir / f"agent-{gather_ms}.log")
    pub = _client(port, "bench-e2e-pub")
    rng = np.random.default_rng(1)
    try:
        deadline = time.monotonic() + 60
        while "subscribed to" not in agent.log and time.monotonic() < deadline:
            time.sleep(0.05)
        t0, i = time.monotonic(), 0
        teach = 600  # readings before the first step: teach-in (400) and the fit
        while len(got) < alerts and agent.alive() and time.monotonic() - t0 < 30 + alerts * 3:
            delay = t0 + i / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            values = rng.normal(0.0, 1.0, len(CHANNELS))
            if i >= teach and (i - teach) % STEP_EVERY < STEP_LEN:
                values[0] += 1000.0
            pub.publish(TOPIC, json.dumps({"ts": round(time.time(), 6), **dict(zip(CHANNELS, values.round(4).tolist()))}))
            i += 1
        time.sleep(1.0)
    finally:
        pub.loop_stop()
        pub.disconnect()
        agent.stop()
        sub.loop_stop()
        sub.disconnect()
    return {"gather_ms": gather_ms, "alerts": len(got), "readings": i, "p50_ms": round(_pct(got, 50), 2),
            "p99_ms": round(_pct(got, 99), 2), "max_ms": round(max(got), 2) if got else None,
            "latencies_ms": [round(x, 2) for x in got]}


def bare_hops(port: int, n: int = 200) -> dict[str, Any]:
    """A QoS 1 publish on one client -> arrival at another (both broker hops of the path, nothing else)."""
    got: list[float] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-e2e-bsub-{time.monotonic_ns()}")
    ready = threading.Event()
    sub.on_connect = lambda c, u, f, rc, p: (c.subscribe("bench/bare", qos=1), ready.set())
    sub.on_message = lambda c, u, m: got.append((time.time() - float(m.payload)) * 1000)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    ready.wait(10)
    time.sleep(0.3)
    pub = _client(port, "bench-e2e-bpub")
    for _ in range(n):
        pub.publish("bench/bare", repr(time.time()), qos=1)
        time.sleep(0.01)
    time.sleep(1.0)
    pub.loop_stop()
    pub.disconnect()
    sub.loop_stop()
    sub.disconnect()
    return {"messages": len(got), "p50_ms": round(_pct(got, 50), 3), "p99_ms": round(_pct(got, 99), 3)}


def run(alerts: int = 40, repeat: int = 2) -> list[dict[str, Any]]:
    out = []
    with Broker() as b, tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        runs: dict[int, list[dict[str, Any]]] = {40: [], 0: []}
        for _ in range(repeat):
            for g in (40, 0):
                runs[g].append(agent_latency(b.port, g, alerts, Path(tmp)))
                r = runs[g][-1]
                print(f"  GATHER_MS={g}: {r['alerts']} alerts, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms", flush=True)
        base = bare_hops(b.port)
    for g in (40, 0):
        lat = [x for r in runs[g] for x in r["latencies_ms"]]
        p99 = _pct(lat, 99)
        out.append(result(f"e2e alert latency p99, GATHER_MS={g} (p50 {_pct(lat, 50):.1f})",
                          round(p99, 2), "ms", base["p99_ms"], "ms bare hops p99", round(p99 / base["p99_ms"], 1)
                          if base["p99_ms"] else None, "<= 50 ms", p99 <= 50, runs=runs[g], bare=base))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alerts", type=int, default=40, help="alerts per run")
    ap.add_argument("--repeat", type=int, default=2, help="runs per setting, alternating")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = run(args.alerts, args.repeat)
    print_rows(rows)
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
