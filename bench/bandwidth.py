"""Bandwidth: bytes published upstream per hour of normal operation (no faults) with default settings, and their
ratio to the bytes ingested, at 1 and at 100 readings/s.

Run from the repository root:  nice -n 5 .venv/bin/python bench/bandwidth.py [--data-minutes 60] [--json out.json]

Input: a stationary normal stream (blocks of the bundled recording's fault-free part, ``bench/_data.py``) written
as a CSV covering ``--data-minutes`` of data time at 1 and at 100 readings/s, replayed by the real agent process
(``python -m agent run``, replay at speed 0) against a private mosquitto; a subscriber records every message the
agent publishes. Summaries (every 300 s of *data* time) and alerts follow data time, so they are measured over the
replayed data hour; stats follow the *wall* clock (every 300 s), so a real-time hour cannot be replayed fast:

    bytes/hour = summary bytes per data hour + alert bytes per data hour + 3600/300 x (stats message size)

The agent runs with ``EDGE_AGENT_STATS_INTERVAL_S=2`` only to sample real stats messages (their size, not their
count, enters the formula); everything else is default. Bytes are MQTT payload + topic, as ``stats.bytes_out``
counts them; the wire estimate adds the MQTT 3.1.1 PUBLISH header, packet id and PUBACK, and the keepalive pings
(PINGREQ+PINGRESP, 4 bytes per 60 s keepalive when nothing else was sent); TCP/IP headers (~66 bytes per segment)
are noted, not added. Birth/status messages are per connection, not per hour: reported apart. Ingested bytes are
the CSV lines' bytes (what the agent counts as ``bytes_in``).
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
from bench._common import AgentProcess, Counter, agent_env, print_rows, result, wire_bytes, write_json  # noqa: E402
from bench._data import normal_stream, write_csv  # noqa: E402

GOAL_BYTES_PER_HOUR = 50 * 1000
GOAL_RATIO_100 = 0.001
SUMMARY_S = 300.0
STATS_S = 300.0
KEEPALIVE_S = 60


def one_rate(port: int, tmp: Path, rate: int, data_s: float, seed: int) -> dict[str, Any]:
    n = int(data_s * rate)
    csv = tmp / f"normal-{rate}hz.csv"
    t0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, aligned to the summary period
    write_csv(csv, normal_stream(n, seed=seed), t0, 1.0 / rate)
    bytes_in = csv.stat().st_size - len(csv.open().readline())
    counter = Counter(port, "edge/#")
    counter.keep = True
    env = agent_env(tmp / f"state-{rate}", port, EDGE_AGENT_SOURCE__PATH=str(csv), EDGE_AGENT_SOURCE__SPEED="0",
                    EDGE_AGENT_STATS_INTERVAL_S="2", EDGE_AGENT_LOG_LEVEL="WARNING")
    agent = AgentProcess(env, tmp / f"agent-{rate}.log")
    t_start = time.monotonic()
    try:
        code = agent.proc.wait(timeout=3600)
    finally:
        agent.stop()
    wall = time.monotonic() - t_start
    time.sleep(0.5)
    counter.close()
    kinds: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}
    for _, topic, payload in counter.messages:
        suffix = topic.split("/", 2)[-1]
        body = json.loads(payload)
        kinds.setdefault(suffix, []).append((len(payload) + len(topic), wire_bytes(len(topic), len(payload), 1), body))
    summaries = [m for m in kinds.get("summary", []) if not m[2].get("final")]
    finals = [m for m in kinds.get("summary", []) if m[2].get("final")]
    alerts = kinds.get("alerts", [])
    stats = kinds.get("stats", [])
    status = kinds.get("status", [])
    hours = data_s / 3600
    summary_size = statistics.fmean(m[0] for m in summaries) if summaries else 0.0
    summary_wire = statistics.fmean(m[1] for m in summaries) if summaries else 0.0
    stats_size = statistics.fmean(m[0] for m in stats[-3:]) if stats else 0.0  # the latest: counters grown
    stats_wire = statistics.fmean(m[1] for m in stats[-3:]) - 6 if stats else 0.0  # stats are QoS 0: no PUBACK, no id
    per_hour = {
        "summaries": summary_size * 3600 / SUMMARY_S,
        "alerts": sum(m[0] for m in alerts) / hours,
        "stats": stats_size * 3600 / STATS_S,
    }
    per_hour_wire = {
        "summaries": summary_wire * 3600 / SUMMARY_S,
        "alerts": sum(m[1] for m in alerts) / hours,
        "stats": stats_wire * 3600 / STATS_S,
        "keepalive": 0.0,  # summaries and stats every 300 s; pings only in the gaps between them
    }
    # paho sends PINGREQ when nothing went out for keepalive_s: with a message every ~150 s on average, about 2 of
    # every 2.5 minutes are silent -> roughly (3600/60 - 24) pings; count all 60 to stay on the safe side.
    per_hour_wire["keepalive"] = 3600 / KEEPALIVE_S * 4
    total = sum(per_hour.values())
    total_wire = sum(per_hour_wire.values())
    in_per_hour = bytes_in / hours
    return {
        "rate_hz": rate, "readings": n, "data_s": data_s, "replay_wall_s": round(wall, 1), "exit_code": code,
        "bytes_in_per_hour": round(in_per_hour), "bytes_out_per_hour": round(total),
        "bytes_out_per_hour_wire": round(total_wire), "per_hour": {k: round(v) for k, v in per_hour.items()},
        "per_hour_wire": {k: round(v) for k, v in per_hour_wire.items()},
        "ratio": total / in_per_hour,
        "messages": {k: len(v) for k, v in kinds.items()},
        "summaries_in_data": len(summaries), "summary_bytes_mean": round(summary_size, 1),
        "stats_bytes_mean": round(stats_size, 1), "alerts_in_data": len(alerts),
        "alert_bytes_mean": round(statistics.fmean(m[0] for m in alerts), 1) if alerts else None,
        "final_summary_bytes": finals[0][0] if finals else None,
        "status_messages_per_start": len(status), "status_bytes_per_start": sum(m[0] for m in status),
        "tcp_ip_estimate_per_hour": round((12 + 12 + 60) * 2 * 66),  # ~84 segments out + their ACKs, 66 B headers
    }


def run(data_minutes: float = 60, seed: int = 0) -> list[dict[str, Any]]:
    out = []
    with Broker() as broker, tempfile.TemporaryDirectory(prefix="bench-bw-") as tmp:
        res = {rate: one_rate(broker.port, Path(tmp), rate, data_minutes * 60, seed) for rate in (1, 100)}
    # A fast replay may end before its first stats message: use the largest stats message seen in this run.
    pool = max(r["stats_bytes_mean"] for r in res.values())
    for r in res.values():
        if not r["stats_bytes_mean"]:
            r["stats_bytes_mean"], r["stats_size_from"] = pool, "the other rate's run (this replay ended first)"
            r["per_hour"]["stats"] = round(pool * 3600 / STATS_S)
            r["per_hour_wire"]["stats"] = round((pool + 4) * 3600 / STATS_S)
            r["bytes_out_per_hour"] = sum(r["per_hour"].values())
            r["bytes_out_per_hour_wire"] = sum(r["per_hour_wire"].values())
            r["ratio"] = r["bytes_out_per_hour"] / r["bytes_in_per_hour"]
    for rate, r in res.items():
        goal = "<= 50 KB/h" + (", <= 0.1 %" if rate == 100 else "")
        ok = r["bytes_out_per_hour"] <= GOAL_BYTES_PER_HOUR and (rate != 100 or r["ratio"] <= GOAL_RATIO_100)
        out.append(result(f"upstream bytes/h at {rate} reading/s", r["bytes_out_per_hour"], "B/h",
                          r["bytes_in_per_hour"], "B/h ingested", round(r["ratio"] * 100, 4), goal, ok,
                          ratio_unit="%", detail=r))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-minutes", type=float, default=60, help="data time replayed per rate (results are per hour)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = run(args.data_minutes, args.seed)
    for r in rows:
        print(json.dumps(r["detail"]))
    print_rows(rows)
    print("(ratio column: upstream/ingested in %)")
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
