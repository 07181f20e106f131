"""Many machines on one gateway: memory and CPU of N assets in one agent process, against one asset alone.

Run from the repository root:
    nice -n 5 .venv/bin/python bench/assets.py [--assets 1 10 50] [--warmup 45] [--measure 60] [--json out.json]

Each scenario is a fresh ``python -m agent run`` process with a configuration file of N ``[[assets]]``, each an MQTT
asset (8 channels, its own topic ``plant/a<i>/telemetry``; all on one client, as the agent shares it), generic
detector (the default), teach-in of 30 readings so that scoring starts early. The benchmark publishes one reading
per asset per second (JSON object of the 8 channels, no timestamp: receipt time, QoS 0) from the demo recording's
normal part, each asset at its own offset. The agent process is pinned to one CPU (the last one) and the broker and
publisher to the others, so "on one core" is literal.

After ``--warmup`` seconds (teach-in done, every asset scoring) the ``--measure`` window samples, from /proc:
VmRSS every 2 s (steady RSS = the median) and utime+stime at its start and end (CPU = their difference over the
wall time). The agent's stats (every 5 s) give what was processed: readings in, windows, queue depth and drops.

- memory: steady RSS of N assets - steady RSS of one asset (same run): goal ≤ 10 MB for 10 assets; the alternative,
  one process per machine, would cost N × one asset's RSS;
- CPU per asset: the N-asset process's CPU / N against the one-asset process's CPU (same run): goal ≤ 1.0×;
- keeping up: with 50 assets, every reading published in the window scored (windows grow by N per second, within
  2 %), no queue drops, queue depth at the end ≤ N, and the process's CPU < 1 core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._broker import Broker  # noqa: E402
from bench._common import CHANNELS, DEVICE_ID, ROOT, Counter, agent_env, compile_agent, print_rows, proc_sample, result, write_json  # noqa: E402
from bench._data import normal_stream  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def config(n: int) -> str:
    lines = ["stats_interval_s = 5", "summary_interval_s = 3600", "[calibration]", "samples = 30", ""]
    for i in range(n):
        lines += ["[[assets]]", f'id = "a{i}"', f'source = {{ kind = "mqtt", topics = ["plant/a{i}/telemetry"] }}', ""]
    return "\n".join(lines)


class Publisher:
    """One reading per asset per second, paced on the monotonic clock, from its own thread."""

    def __init__(self, port: int, n: int):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.n = n
        self.rows = [normal_stream(4000, seed=i + 1) for i in range(n)]
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-assets-pub-{os.getpid()}")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        second = 0
        while not self.stop.is_set():
            for i in range(self.n):
                row = self.rows[i][second % 4000]
                self.client.publish(f"plant/a{i}/telemetry", json.dumps({c: row[c] for c in CHANNELS}), qos=0)
                self.sent += 1
            second += 1
            self.stop.wait(max(0.0, t0 + second - time.monotonic()))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.client.loop_stop()
        self.client.disconnect()


def scenario(n: int, warmup: float, measure: float, workdir: Path) -> dict[str, Any]:
    cores = sorted(os.sched_getaffinity(0))
    agent_core, others = cores[-1], set(cores[:-1]) or set(cores)
    os.sched_setaffinity(0, others)  # this process (publisher, stats reader) off the agent's core
    with Broker() as broker:
        if broker.proc is not None:
            os.sched_setaffinity(broker.proc.pid, others)
        cfg = workdir / f"assets-{n}.toml"
        cfg.write_text(config(n))
        env = agent_env(workdir / f"state-{n}", broker.port, EDGE_AGENT_CONFIG_FILE=str(cfg),
                        EDGE_AGENT_CLOCK_SYNC_REQUIRED="false", EDGE_AGENT_LOG_LEVEL="INFO")
        stats = Counter(broker.port, f"edge/{DEVICE_ID}/stats", qos=0)
        stats.keep = True
        log = open(workdir / f"agent-{n}.log", "w")
        compile_agent()  # as an installed agent has it (bench._common.compile_agent)
        proc = subprocess.Popen([sys.executable, "-m", "agent", "run"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=log, preexec_fn=lambda: os.sched_setaffinity(0, {agent_core}))
        pub = None
        try:
            deadline = time.monotonic() + 30
            while b"subscribed to" not in (workdir / f"agent-{n}.log").read_bytes() and time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError((workdir / f"agent-{n}.log").read_text()[-2000:])
                time.sleep(0.1)
            pub = Publisher(broker.port, n)
            pub.thread.start()
            time.sleep(warmup)

            def last_stats() -> dict[str, Any]:
                return json.loads(stats.messages[-1][2]) if stats.messages else {}

            s0 = last_stats()
            t0, c0 = time.monotonic(), cpu_seconds(proc.pid)
            rss: list[int] = []
            while time.monotonic() - t0 < measure:
                rss.append(proc_sample(proc.pid)["VmRSS"])
                time.sleep(2)
            t1, c1 = time.monotonic(), cpu_seconds(proc.pid)
            time.sleep(5.5)  # one more stats message that covers the whole window
            s1 = last_stats()
            sent = pub.sent
        finally:
            if pub is not None:
                pub.close()
            stats.close()
            if proc.poll() is None:
                proc.terminate()
            proc.wait(60)
            log.close()
    windows = s1.get("windows", 0) - s0.get("windows", 0)
    stats_span = (json_ts(s1) - json_ts(s0)) if s0 and s1 else None
    return {
        "assets": n, "rss_kb_median": int(statistics.median(rss)), "rss_kb_max": max(rss), "rss_samples": rss,
        "cpu_s": round(c1 - c0, 3), "wall_s": round(t1 - t0, 3), "cpu_fraction": round((c1 - c0) / (t1 - t0), 4),
        "cpu_fraction_per_asset": round((c1 - c0) / (t1 - t0) / n, 5),
        "windows_in_stats_span": windows, "stats_span_s": stats_span,
        "windows_per_s": round(windows / stats_span, 2) if stats_span else None,
        "queue_dropped": s1.get("queue", {}).get("dropped"), "queue_depth_end": s1.get("queue", {}).get("depth"),
        "readings_in": s1.get("readings_in"), "published": sent, "state": s1.get("state"),
        "agent_core": agent_core,
    }


def json_ts(stats: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.strptime(stats["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--warmup", type=float, default=45.0, help="seconds before measuring (teach-in is 30 readings)")
    ap.add_argument("--measure", type=float, default=60.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if 1 not in args.assets:
        args.assets = [1, *args.assets]
    runs: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-assets-") as tmp:
        for n in args.assets:
            print(f"== {n} asset(s): {args.warmup:.0f} s warm-up, {args.measure:.0f} s measured", flush=True)
            runs[n] = scenario(n, args.warmup, args.measure, Path(tmp))
            r = runs[n]
            print(f"   RSS {r['rss_kb_median'] / 1024:.1f} MB, CPU {r['cpu_fraction']:.1%} of a core "
                  f"({r['cpu_fraction_per_asset']:.2%} per asset), {r['windows_per_s']} windows/s, "
                  f"queue dropped {r['queue_dropped']}, depth {r['queue_depth_end']}", flush=True)
    one = runs[1]
    rows = []
    for n, r in runs.items():
        if n == 1:
            continue
        extra_mb = (r["rss_kb_median"] - one["rss_kb_median"]) / 1024
        rows.append(result(f"RSS of {n} assets - one asset", round(extra_mb, 2), "MB", round(one["rss_kb_median"] / 1024, 1),
                           "MB one asset", round(r["rss_kb_median"] / one["rss_kb_median"], 3), "<= +10 MB (10 assets)",
                           extra_mb <= 10 if n <= 10 else None,
                           one_process_per_machine_mb=round(n * one["rss_kb_median"] / 1024, 1)))
        ratio = r["cpu_fraction_per_asset"] / one["cpu_fraction_per_asset"]
        rows.append(result(f"CPU per asset, {n} assets", round(100 * r["cpu_fraction_per_asset"], 3), "% core",
                           round(100 * one["cpu_fraction_per_asset"], 3), "% core alone", round(ratio, 3), "<= 1.0x",
                           ratio <= 1.0))
        expected = n  # windows per second once every asset scores
        keeps_up = (r["windows_per_s"] is not None and r["windows_per_s"] >= 0.98 * expected and r["queue_dropped"] == 0
                    and (r["queue_depth_end"] or 0) <= n and r["cpu_fraction"] < 1.0)
        rows.append(result(f"{n} assets at 1 reading/s, one core", r["windows_per_s"], "windows/s", float(expected),
                           "readings/s sent", round(r["windows_per_s"] / expected, 3) if r["windows_per_s"] else None,
                           "keeps up, CPU < 1 core", keeps_up, cpu_fraction=r["cpu_fraction"],
                           queue_dropped=r["queue_dropped"]))
    rows[0]["runs"] = runs
    print_rows(rows)
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
