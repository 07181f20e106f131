"""MQTT ingest through the whole agent process (MQTT source → parse → clean → window → infer → decide) against a bare
paho subscriber process that only counts the same messages, same broker, same publisher, same run.

Run from the repository root:  nice -n 5 .venv/bin/python bench/mqtt_ingest.py [--json out.json]

Default (``--mode sustained``): the peer harness's rule (../shared/peer/node-red). Each subject gets a ladder of
``--step-s`` (20) second steps at fixed rates (a paced publisher process writing pre-built QoS 0 PUBLISH packets:
JSON objects of the 8 SKAB channels, no timestamp, as the peer workload); a rate is SUSTAINED when >= 98 % of what
was sent is processed within the step (the last count received during the step against what had been sent by
then) and >= 98 % once the step's backlog drained. The ladder stops at the first rate that fails. The agent's
processed count is what went through its pipeline, from its stats at EDGE_AGENT_STATS_INTERVAL_S=1:
``readings_in - queue.dropped - queue.depth - readings the cleaner refused whole``; the bare subscriber prints its
count every 0.25 s. Before its ladder the agent is taught in at 100 readings/s (every measured reading is scored),
and both subjects' CPU at 100 readings/s is measured over one step (``cpu_100``). The result is the agent's
sustained rate ÷ the bare subscriber's (goal >= 0.7).

``--mode burst`` (the earlier measure, kept for comparison): N JSON objects with ``ts`` published as fast as one
paho client can; the time from the first publish to the summary that closes on the last reading, against the bare
subscriber's time to receive N. It times the drain of a burst, not a rate a user can live with.
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
from bench.footprint import floor_once  # noqa: E402

GOAL = 0.7
RSS_GOAL_MB = 10.0  # steady RSS at every rate <= the import floor + 10 MB (issue 15)
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


# -- sustained rate with a lag limit (the peer harness's rule) ----------------------------------------------------

KEEP = 0.98
SUSTAINED_RATES = "1000,2000,4000,6000,8000,10000,12000,14000,16000,18000,20000,22000,24000,26000,28000,30000"
CLEANER_REJECTS = ("bad_timestamp", "duplicate_ts", "out_of_order", "stale_channel")  # whole readings refused

_PACED_PUB = r"""
import json, socket, sys, time
port, topic, rate, duration = int(sys.argv[1]), sys.argv[2].encode(), float(sys.argv[3]), float(sys.argv[4])
payloads = [p.encode() for p in json.loads(sys.stdin.read())]
def packet(body, ptype=0x30):
    n, rl = len(body), bytearray()
    while True:
        d, n = n % 128, n // 128
        rl.append(d | 0x80 if n else d)
        if not n:
            return bytes([ptype]) + bytes(rl) + body
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
cid = f"bench-pub-{time.monotonic_ns()}".encode()
s.sendall(packet(b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid, 0x10))
assert s.recv(4)[:2] == b"\x20\x02", "no CONNACK"
packets = [packet(len(topic).to_bytes(2, "big") + topic + p) for p in payloads]
NP, sent, timeline = len(packets), 0, []
t0 = time.monotonic(); t_end = t0 + duration; next_tl = t0
while True:
    now = time.monotonic()
    if now >= t_end:
        break
    if now >= next_tl:
        timeline.append((now, sent)); next_tl += 0.25
    due = int((now - t0) * rate)
    if sent < due:
        n = min(due - sent, 5000)
        s.sendall(b"".join([packets[(sent + i) % NP] for i in range(n)]))
        sent += n
    else:
        time.sleep(0.0005)
t_stop = time.monotonic()
timeline.append((t_stop, sent))
s.sendall(b"\xe0\x00"); s.close()
print(json.dumps({"t0": t0, "t_stop": t_stop, "sent": sent, "rate": sent / (t_stop - t0), "timeline": timeline}))
"""

_BARE_COUNTER = r"""
import sys, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
count = 0
def on_message(c, u, m):
    global count
    count += 1
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare-count")
c.on_connect = lambda c, u, f, rc, p: c.subscribe(sys.argv[2], qos=0)
c.on_message = on_message
def ticker():
    while True:
        time.sleep(0.25)
        print(time.monotonic(), count, flush=True)
threading.Thread(target=ticker, daemon=True).start()
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_forever()
"""


def peer_payloads() -> list[str]:
    rows = normal_stream(2000, seed=1)
    return [json.dumps(r) for r in rows]


class Counts:
    """(monotonic time, processed so far) of one subject, as they come in."""

    def __init__(self) -> None:
        self.points: list[tuple[float, int]] = []

    def add(self, t: float, n: int) -> None:
        self.points.append((t, n))

    def last(self) -> tuple[float, int] | None:
        return self.points[-1] if self.points else None

    def stable(self, min_wait: float, cap: float = 60.0) -> int:
        """Wait until two successive counts at least 0.9 s apart are equal (the backlog drained); that count."""
        t_start = time.monotonic()
        time.sleep(min_wait)
        while time.monotonic() - t_start < cap:
            pts = [p for p in self.points if p[0] >= t_start]
            if len(pts) >= 2:
                t1, n1 = pts[-1]
                older = [p for p in pts if p[0] <= t1 - 0.9]
                if older and older[-1][1] == n1:
                    return n1
            time.sleep(0.1)
        last = self.last()
        return last[1] if last else 0


def _sent_at(timeline: list[list[float]], t: float) -> float:
    prev = timeline[0]
    for pt in timeline:
        if pt[0] > t:
            span = pt[0] - prev[0]
            return prev[1] + (pt[1] - prev[1]) * ((t - prev[0]) / span if span > 0 else 0)
        prev = pt
    return timeline[-1][1]


def paced_step(port: int, topic: str, rate: float, seconds: float, payloads: list[str], counts: Counts,
               pid: int) -> dict[str, Any]:
    """One step of the ladder: publish at ``rate`` for ``seconds``; what the subject processed in it and after."""
    before = counts.stable(min_wait=1.2)
    cpu0, w0 = _cpu_s(pid), time.monotonic()
    p = subprocess.run([sys.executable, "-c", _PACED_PUB, str(port), topic, str(rate), str(seconds)],
                       input=json.dumps(payloads), capture_output=True, text=True, timeout=seconds + 60)
    cpu1, w1 = _cpu_s(pid), time.monotonic()
    pub = json.loads(p.stdout)
    inside = [(t, n - before) for t, n in counts.points if pub["t0"] + 2 <= t <= pub["t_stop"] + 0.05]
    in_step = inside[-1][1] / _sent_at(pub["timeline"], inside[-1][0]) if inside else 0.0
    final = counts.stable(min_wait=2.5) - before
    keep = final / pub["sent"] if pub["sent"] else 0.0
    ok = pub["rate"] >= 0.99 * rate and in_step >= KEEP and keep >= KEEP
    return {"rate": rate, "published_rate": round(pub["rate"]), "sent": pub["sent"], "processed": final,
            "keep_in_step": round(in_step, 4), "keep_final": round(keep, 4), "pass": ok,
            "cpu_pct": round(100 * (cpu1 - cpu0) / (w1 - w0), 2), "rss_kb": _rss_kb(pid)}


def ladder(port: int, topic: str, rates: list[int], seconds: float, payloads: list[str], counts: Counts,
           pid: int, alive: Any) -> dict[str, Any]:
    cpu100 = paced_step(port, topic, 100, seconds, payloads, counts, pid)
    steps = []
    for rate in rates:
        r = paced_step(port, topic, rate, seconds, payloads, counts, pid)
        steps.append(r)
        print(f"    {rate:>6}/s: {'pass' if r['pass'] else 'FAIL'}  in step {r['keep_in_step']:.3f}, "
              f"final {r['keep_final']:.3f}, published {r['published_rate']}/s, cpu {r['cpu_pct']} %, "
              f"RSS {r['rss_kb'] / 1024:.1f} MB", flush=True)
        if not r["pass"] or not alive():
            break
    passed = [r["rate"] for r in steps if r["pass"]]
    return {"sustained": max(passed) if passed else 0, "cpu_100": cpu100, "steps": steps}


def bare_ladder(port: int, rates: list[int], seconds: float, payloads: list[str]) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, "-c", _BARE_COUNTER, str(port), "bench/+/telemetry"],
                            stdout=subprocess.PIPE, text=True)
    counts = Counts()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            t, n = line.split()
            counts.add(float(t), int(n))

    threading.Thread(target=read, daemon=True).start()
    try:
        while not counts.points:
            time.sleep(0.05)
        time.sleep(0.5)
        rss = _rss_kb(proc.pid)
        out = ladder(port, TOPIC, rates, seconds, payloads, counts, proc.pid, lambda: proc.poll() is None)
        out["rss_kb_100"] = rss
        return out
    finally:
        proc.terminate()
        proc.wait(10)


def agent_ladder(port: int, rates: list[int], seconds: float, payloads: list[str], workdir: Path,
                 queue_size: int | None) -> dict[str, Any]:
    extra: dict[str, Any] = dict(EDGE_AGENT_SOURCE__KIND="mqtt", EDGE_AGENT_SOURCE__TOPICS="bench/+/telemetry",
                                 EDGE_AGENT_SOURCE__SENSOR_PATTERN="bench/{sensor}/telemetry",
                                 EDGE_AGENT_STATS_INTERVAL_S=1, EDGE_AGENT_CLOCK_SYNC_REQUIRED="false")
    if queue_size:
        extra["EDGE_AGENT_QUEUE_SIZE"] = queue_size
    counts = Counts()
    stats: list[dict[str, Any]] = []

    def on_stats(c: Any, u: Any, m: Any) -> None:
        st = json.loads(m.payload)
        stats.append(st)
        rej = st.get("rejected") or {}
        q = st.get("queue") or {}
        counts.add(time.monotonic(), st["readings_in"] - q.get("dropped", 0) - q.get("depth", 0)
                   - sum(v for k, v in rej.items() if k in CLEANER_REJECTS))

    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-stats-{os.getpid()}")
    watcher.on_connect = lambda c, u, f, rc, p: c.subscribe("edge/+/stats", qos=0)
    watcher.on_message = on_stats
    watcher.connect("127.0.0.1", port)
    watcher.loop_start()
    agent = AgentProcess(agent_env(workdir / "state", port, **extra), workdir / "agent-sustained.log")
    try:
        wait_log(agent, "subscribed to", 60)
        while not stats:
            time.sleep(0.05)
        # teach-in first (at 100 readings/s), so that every measured reading is scored
        while stats[-1].get("state") == "calibrating":
            paced_step(port, TOPIC, 100, 3, payloads, counts, agent.pid)
        rss = _rss_kb(agent.pid)
        out = ladder(port, TOPIC, rates, seconds, payloads, counts, agent.pid, agent.alive)
        out["rss_kb_100"] = rss
        out["queue_dropped"] = stats[-1]["queue"]["dropped"]
        out["log_tail"] = agent.log[-1500:]
        return out
    finally:
        agent.stop()
        watcher.loop_stop()
        watcher.disconnect()


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def sustained(rates: list[int], seconds: float, queue_size: int | None = None) -> list[dict[str, Any]]:
    payloads = peer_payloads()
    with Broker() as broker, tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        print("  bare paho counter:", flush=True)
        base = bare_ladder(broker.port, rates, seconds, payloads)
        print("  agent:", flush=True)
        ours = agent_ladder(broker.port, rates, seconds, payloads, Path(tmp), queue_size)
    ratio = ours["sustained"] / base["sustained"] if base["sustained"] else None
    cpu = ours["cpu_100"]["cpu_pct"] / base["cpu_100"]["cpu_pct"] if base["cpu_100"]["cpu_pct"] else None
    # the default model is the generic detector: its floor is the same libraries without a TFLite runtime
    floor_kb = floor_once("none")["rss_kb"]
    steps = [ours["cpu_100"], *(r for r in ours["steps"] if r["pass"])]
    over = {r["rate"]: round((r["rss_kb"] - floor_kb) / 1024, 1) for r in steps}
    worst = max(over.values()) if over else None
    print(f"  RSS over the floor ({floor_kb / 1024:.1f} MB), MB by rate: {over}", flush=True)
    return [
        result(f"MQTT sustained rate ({seconds:g} s steps)", ours["sustained"], "readings/s", base["sustained"],
               "msg/s bare sub", round(ratio, 3) if ratio is not None else None, ">= 0.7x",
               ratio is not None and ratio >= GOAL, agent=ours, bare=base, step_s=seconds),
        result("CPU at 100 readings/s", ours["cpu_100"]["cpu_pct"], "% of a core", base["cpu_100"]["cpu_pct"],
               "% bare sub", round(cpu, 2) if cpu is not None else None, "-", None),
        result("RSS over the import floor, worst sustained rate", worst, "MB", round(floor_kb / 1024, 1),
               "MB floor (no runtime)", worst, "<= +10 MB", worst is not None and worst <= RSS_GOAL_MB, by_rate=over),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["sustained", "burst"], default="sustained")
    ap.add_argument("--rates", default=SUSTAINED_RATES, help="sustained: the ladder, readings/s")
    ap.add_argument("--step-s", type=float, default=20.0, help="sustained: seconds per step (the peer rule: 20)")
    ap.add_argument("--readings", type=int, default=20_000, help="burst: readings published")
    ap.add_argument("--warmup", type=int, default=600, help="burst: readings before the timed part (teach-in is 400)")
    ap.add_argument("--queue-size", type=int, default=None, help="EDGE_AGENT_QUEUE_SIZE (default: the agent's, 10000)")
    ap.add_argument("--repeat", type=int, default=1, help="burst: runs")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    print(f"load average at start: {open('/proc/loadavg').read().strip()}", flush=True)
    if args.mode == "sustained":
        rows = sustained([int(r) for r in args.rates.split(",")], args.step_s, args.queue_size)
    else:
        rows = run(args.readings, args.warmup, args.queue_size, args.repeat)
        for r in rows[0]["runs"]:
            print("baseline:", r["baseline"])
            print("agent:   ", r["agent"])
    print(f"load average at end: {open('/proc/loadavg').read().strip()}", flush=True)
    print_rows(rows)
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
