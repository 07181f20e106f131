"""Footprint: the running agent's steady RSS vs an import floor (a process that only imports the same libraries
and loads the same model), and start → READY=1 vs the floor's start → model loaded.

Run from the repository root:
    nice -n 5 .venv/bin/python bench/footprint.py [--seconds 20] [--starts 3] [--json out.json]

Agent: ``python -m agent run`` replaying the bundled recording in a loop at speed 50 against a private mosquitto,
with a real ``$NOTIFY_SOCKET`` (an AF_UNIX datagram socket, as systemd gives it); start time = Popen → the
``READY=1`` datagram; steady RSS = median VmRSS (/proc/PID/status) over the last 5 s of ``--seconds``.
Floor: ``python -c`` importing numpy, the TFLite runtime, paho-mqtt, pyserial and pydantic-settings and loading
the model (``Interpreter(model_content=...).allocate_tensors()``); time = Popen → its "loaded" line; RSS after.
Starts are repeated ``--starts`` times (the fastest of each is compared: on a shared machine the
slower ones measure the neighbours' load; all are in the JSON); both runtimes are measured when installed. The
generic detector (the default: no TFLite runtime imported) is compared with the pump-anomaly agent and with its own
floor, the same libraries without a runtime.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.bundled import bundled_model  # noqa: E402
from bench._broker import Broker  # noqa: E402
from bench._common import ROOT, AgentProcess, agent_env, print_rows, proc_sample, result, write_json  # noqa: E402
from bench.window_cost import runtimes  # noqa: E402

RSS_GOAL_KB = 10 * 1024
GENERIC_RSS_GOAL_KB = 5 * 1024  # the generic detector against the pump-anomaly agent: at most +5 MB
START_GOAL = 1.5

FLOOR = r"""
import sys
import numpy, paho.mqtt.client, serial, pydantic_settings, orjson  # the libraries every agent imports
runtime = sys.argv[2]
if runtime != "none":  # none: the generic detector's floor (numpy only, no TFLite runtime)
    if runtime == "ai_edge_litert":
        from ai_edge_litert.interpreter import Interpreter
    else:
        from tflite_runtime.interpreter import Interpreter
    i = Interpreter(model_content=open(sys.argv[1], "rb").read(), num_threads=1)
    i.allocate_tensors()
print("loaded", flush=True)
sys.stdin.read()
"""


def floor_once(runtime: str) -> dict[str, Any]:
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-c", FLOOR, str(bundled_model("pump-anomaly")), runtime], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    assert p.stdout is not None and p.stdin is not None
    line = p.stdout.readline()
    t = time.monotonic() - t0
    if line.strip() != "loaded":
        raise RuntimeError("floor process failed")
    time.sleep(1.0)
    s = proc_sample(p.pid)
    p.stdin.close()
    p.wait(10)
    return {"start_s": t, "rss_kb": s["VmRSS"], "hwm_kb": s["VmHWM"]}


class Notify:
    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)

    def wait_ready(self, agent: AgentProcess, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                if not agent.alive():
                    raise RuntimeError(f"agent exited: {agent.log[-2000:]}") from None
                continue
            if "READY=1" in data:
                return time.monotonic()
        raise RuntimeError("no READY=1")

    def close(self) -> None:
        self.sock.close()


def agent_once(port: int, tmp: Path, runtime: str, seconds: float, model: str = "pump-anomaly") -> dict[str, Any]:
    notify = Notify(tmp / f"notify-{time.monotonic_ns()}.sock")
    env = agent_env(tmp / f"state-{time.monotonic_ns()}", port, EDGE_AGENT_SOURCE__LOOP="true",
                    EDGE_AGENT_SOURCE__SPEED="50", EDGE_AGENT_MODEL__RUNTIME=runtime, NOTIFY_SOCKET=notify.path,
                    EDGE_AGENT_LOG_LEVEL="WARNING", EDGE_AGENT_MODEL__PATH=model)
    agent = AgentProcess(env, tmp / f"agent-{time.monotonic_ns()}.log")
    try:
        t_ready = notify.wait_ready(agent) - agent.t_start
        samples = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(1.0)
            samples.append(proc_sample(agent.pid))
    finally:
        code = agent.stop()
        notify.close()
    tail = samples[-5:] if samples else []
    return {"start_s": t_ready, "rss_kb": statistics.median(s["VmRSS"] for s in tail) if tail else None,
            "hwm_kb": tail[-1]["VmHWM"] if tail else None, "threads": tail[-1]["Threads"] if tail else None,
            "fds": tail[-1]["fds"] if tail else None, "exit_code": code}


def run(seconds: float = 20, starts: int = 3) -> list[dict[str, Any]]:
    rows = []
    with Broker() as broker, tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        for rt in runtimes():
            floors = [floor_once(rt) for _ in range(starts)]
            long = agent_once(broker.port, Path(tmp), rt, seconds)
            shorts = [agent_once(broker.port, Path(tmp), rt, 0) for _ in range(starts - 1)]
            # the fastest of N starts: on a shared machine the others measure the neighbours' load
            a_start = min([long["start_s"]] + [s["start_s"] for s in shorts])
            f_start = min(f["start_s"] for f in floors)
            f_rss = statistics.median(f["rss_kb"] for f in floors)
            delta = long["rss_kb"] - f_rss
            rows.append(result(f"steady RSS ({rt})", round(long["rss_kb"] / 1024, 1), "MB", round(f_rss / 1024, 1),
                               "MB import floor", round(delta / 1024, 1), "<= +10 MB (ratio=+MB)", delta <= RSS_GOAL_KB,
                               agent=long, floor=floors))
            rows.append(result(f"start to READY=1 ({rt})", round(a_start, 3), "s", round(f_start, 3), "s import floor",
                               round(a_start / f_start, 2), "<= 1.5x", a_start / f_start <= START_GOAL,
                               agent_starts=[long["start_s"]] + [s["start_s"] for s in shorts],
                               floor_starts=[f["start_s"] for f in floors]))
        # the default generic detector (numpy only) against the pump-anomaly agent above, same recording and run
        pump = next(r for r in rows if r["name"].startswith("steady RSS"))["agent"]
        gen = agent_once(broker.port, Path(tmp), "auto", seconds, model="generic")
        delta = gen["rss_kb"] - pump["rss_kb"]
        rows.append(result("steady RSS, generic detector", round(gen["rss_kb"] / 1024, 1), "MB",
                           round(pump["rss_kb"] / 1024, 1), "MB pump-anomaly agent", round(delta / 1024, 1),
                           "<= +5 MB (ratio=+MB)", delta <= GENERIC_RSS_GOAL_KB, agent=gen))
        # ... and against its own floor: the same libraries without a TFLite runtime (what it imports)
        floors = [floor_once("none") for _ in range(starts)]
        f_rss = statistics.median(f["rss_kb"] for f in floors)
        delta = gen["rss_kb"] - f_rss
        rows.append(result("steady RSS, generic (no runtime)", round(gen["rss_kb"] / 1024, 1), "MB",
                           round(f_rss / 1024, 1), "MB floor, no runtime", round(delta / 1024, 1),
                           "<= +10 MB (ratio=+MB)", delta <= RSS_GOAL_KB, floor=floors))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20, help="how long the agent runs before its RSS is taken")
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = run(args.seconds, args.starts)
    for r in rows:
        print(r["name"], {k: v for k, v in r.items() if k in ("agent", "floor", "agent_starts", "floor_starts")})
    print_rows(rows)
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
