"""Soak: the agent process at 100x real rate (bundled recording looped, speed 100) for N seconds against a private
mosquitto; RSS, threads and open file descriptors sampled from /proc every 10 s; growth reported after a warm-up.

Run from the repository root:  nice -n 5 .venv/bin/python bench/soak.py [--seconds 3600] [--json out.json]

Goal (issue): RSS growth <= 2 MB over the hour, no thread or file-descriptor growth. Growth = median of the last
three samples minus median of the first three after the warm-up; the least-squares slope (kB/h) is reported too.
With ``--json`` the file is rewritten after every sample, so an interrupted soak still leaves its partial record.
The baseline column is the RSS right after the warm-up (there is no separate baseline process for a soak).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._broker import Broker  # noqa: E402
from bench._common import AgentProcess, Counter, agent_env, print_rows, proc_sample, result, write_json  # noqa: E402

RSS_GOAL_KB = 2048


def slope_per_hour(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den * 3600 if den else None


def analyse(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    after = [s for s in samples if s["t"] >= warmup_s]
    if len(after) < 2:
        return {"samples_after_warmup": len(after)}
    head, tail = after[:3], after[-3:]
    rss0 = statistics.median(s["VmRSS"] for s in head)
    rss1 = statistics.median(s["VmRSS"] for s in tail)
    out = {
        "samples_after_warmup": len(after),
        "measured_s": round(after[-1]["t"] - after[0]["t"], 1),
        "rss_after_warmup_kb": rss0, "rss_end_kb": rss1, "rss_growth_kb": rss1 - rss0,
        "rss_max_kb": max(s["VmRSS"] for s in after), "rss_min_kb": min(s["VmRSS"] for s in after),
        "rss_slope_kb_per_h": slope_per_hour([s["t"] for s in after], [s["VmRSS"] for s in after]),
        "threads_after_warmup": after[0]["Threads"], "threads_max": max(s["Threads"] for s in after),
        "threads_end": after[-1]["Threads"],
        "fds_after_warmup": after[0]["fds"], "fds_max": max(s["fds"] for s in after), "fds_end": after[-1]["fds"],
    }
    out["thread_growth"] = out["threads_max"] - out["threads_after_warmup"]
    out["fd_growth"] = out["fds_max"] - out["fds_after_warmup"]
    return out


def run(seconds: float, interval: float = 10.0, warmup: float | None = None, speed: float = 100.0,
        json_path: Path | None = None, quiet: bool = False) -> list[dict[str, Any]]:
    warmup = min(300.0, seconds / 6) if warmup is None else warmup
    record: dict[str, Any] = {"seconds": seconds, "interval_s": interval, "warmup_s": warmup, "speed": speed,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "samples": [], "done": False}
    with Broker() as broker, tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        counter = Counter(broker.port, "edge/#")
        env = agent_env(Path(tmp) / "state", broker.port, EDGE_AGENT_SOURCE__LOOP="true",
                        EDGE_AGENT_SOURCE__SPEED=str(speed), EDGE_AGENT_LOG_LEVEL="WARNING")
        log_path = Path(json_path).with_suffix(".agent.log") if json_path else Path(tmp) / "agent.log"
        agent = AgentProcess(env, log_path)
        t0 = time.monotonic()
        try:
            next_t = t0
            while True:
                now = time.monotonic()
                if now - t0 > seconds:
                    break
                if not agent.alive():
                    record["error"] = f"agent exited early with {agent.proc.returncode}: {agent.log[-2000:]}"
                    break
                if now >= next_t:
                    s = proc_sample(agent.pid)
                    s["t"] = round(now - t0, 1)
                    s["published"] = counter.count
                    record["samples"].append(s)
                    if not quiet:
                        print(f"t={s['t']:>7.0f}s rss={s['VmRSS']} kB threads={s['Threads']} fds={s['fds']} "
                              f"published={counter.count}", flush=True)
                    record["analysis"] = analyse(record["samples"], warmup)
                    write_json(json_path, record)
                    next_t += interval
                time.sleep(min(1.0, max(0.0, next_t - time.monotonic())))
        finally:
            record["exit_code"] = agent.stop()
            counter.close()
        stats = counter.last.get("stats")
        record["last_stats"] = json.loads(stats) if stats else None
        record["published_messages"] = counter.count
        record["published_by_topic"] = counter.by_suffix
        record["duration_s"] = round(time.monotonic() - t0, 1)
    record["analysis"] = a = analyse(record["samples"], warmup)
    record["done"] = "error" not in record
    ok = bool(a.get("rss_growth_kb") is not None and a["rss_growth_kb"] <= RSS_GOAL_KB
              and a["thread_growth"] == 0 and a["fd_growth"] == 0 and record["done"])
    label = f"soak {record['duration_s'] / 60:.0f} min at {speed:.0f}x"
    rows = [
        result(f"{label}: RSS growth", a.get("rss_growth_kb"), "kB", a.get("rss_after_warmup_kb"), "kB after warm-up",
               None, "<= 2048 kB, no thread/fd growth", ok,
               threads=f"{a.get('threads_after_warmup')}->{a.get('threads_max')}",
               fds=f"{a.get('fds_after_warmup')}->{a.get('fds_max')}", soak=record),
    ]
    write_json(json_path, record)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3600)
    ap.add_argument("--interval", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds ignored at the start (default min(300, seconds/6))")
    ap.add_argument("--speed", type=float, default=100)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = run(args.seconds, args.interval, args.warmup, args.speed, args.json)
    a = rows[0]["soak"]["analysis"]
    print(json.dumps(a, indent=1))
    print_rows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
