"""Helpers shared by the benchmarks: the agent as a real process, /proc sampling, a counting subscriber, results."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

DEVICE_ID = "bench-gw"


def runtimes() -> list[str]:
    """The TFLite runtimes installed here, of the two the agent supports."""
    from agent.infer import interpreter_class

    out = []
    for name in ("ai_edge_litert", "tflite_runtime"):
        try:
            interpreter_class(name)
            out.append(name)
        except Exception:  # noqa: BLE001 - not installed, or does not load here
            pass
    return out

CHANNELS = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
            "Voltage", "Volume Flow RateRMS"]


def agent_env(state_dir: Path, port: int, **extra: Any) -> dict[str, str]:
    """A clean environment for an agent process: no EDGE_AGENT_* from outside, a private state dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update(
        EDGE_AGENT_STATE_DIR=str(state_dir), EDGE_AGENT_MQTT__HOST="127.0.0.1", EDGE_AGENT_MQTT__PORT=str(port),
        EDGE_AGENT_DEVICE_ID=DEVICE_ID, EDGE_AGENT_LOG_LEVEL="INFO",
    )
    env.pop("NOTIFY_SOCKET", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def compile_agent() -> None:
    """Write the agent package's bytecode (``__pycache__``, git-ignored), as ``pip install`` does for an installed
    agent (deploy/install.sh, the peer harness). Without it a checkout run under PYTHONDONTWRITEBYTECODE=1 (this
    workplace's environment sets it) compiles its ~60 modules at every start: measured 2026-12-02, 1.1 MB more RSS
    after importing the agent (5.4 against 4.3 MB) and the compile time in every start, which no installed agent
    pays. Cheap when the bytecode is up to date."""
    import compileall

    compileall.compile_dir(str(ROOT / "agent"), quiet=1)


class AgentProcess:
    """``python -m agent run`` as a real process, stderr to a file (with the package's bytecode written first, as an
    installed agent has it: ``compile_agent``)."""

    def __init__(self, env: dict[str, str], log_path: Path):
        compile_agent()
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "w")
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "run"], env=env, cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=self._log)
        self.pid = self.proc.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()


def proc_sample(pid: int) -> dict[str, int]:
    """VmRSS (kB), VmHWM (kB), Threads and open fds of a live process, from /proc."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[key] = int(val.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


class Counter:
    """A bare paho subscriber that counts messages and bytes (payload + topic) per topic suffix."""

    def __init__(self, port: int, topic: str = "#", qos: int = 1, client_id: str | None = None):
        self.count = 0
        self.bytes = 0
        self.by_suffix: dict[str, list[int]] = {}  # suffix -> [messages, payload+topic bytes, wire bytes]
        self.messages: list[tuple[float, str, bytes]] = []
        self.last: dict[str, bytes] = {}  # suffix -> last payload
        self.keep = False
        self._lock = threading.Lock()
        self._sub = threading.Event()
        cid = client_id or f"bench-count-{os.getpid()}-{time.monotonic_ns()}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=qos)
        self.client.on_subscribe = lambda *a: self._sub.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._sub.wait(10):
            raise RuntimeError("counting subscriber could not subscribe")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        n = len(msg.payload) + len(msg.topic)
        suffix = msg.topic.split("/", 2)[-1] if msg.topic.count("/") >= 2 else msg.topic
        with self._lock:
            self.count += 1
            self.bytes += n
            s = self.by_suffix.setdefault(suffix, [0, 0, 0])
            s[0] += 1
            s[1] += n
            s[2] += wire_bytes(len(msg.topic), len(msg.payload), msg.qos)
            self.last[suffix] = bytes(msg.payload)
            if self.keep:
                self.messages.append((time.monotonic(), msg.topic, bytes(msg.payload)))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def wire_bytes(topic_len: int, payload_len: int, qos: int) -> int:
    """Bytes of an MQTT 3.1.1 PUBLISH on the wire (fixed header, topic length, packet id), plus the PUBACK at QoS 1."""
    remaining = 2 + topic_len + (2 if qos else 0) + payload_len
    return 1 + _varint_len(remaining) + remaining + (4 if qos else 0)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    from bench._broker import mosquitto_version

    out = {"python": platform.python_version()}
    for name in ("numpy", "ai-edge-litert", "tflite-runtime", "paho-mqtt", "pyserial", "pydantic-settings", "pydantic"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "absent"
    out["mosquitto"] = mosquitto_version()
    return out


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gb": round(mem_kb / 2**20, 1), "kernel": platform.release(),
            "arch": platform.machine(), "nice": os.nice(0)}


def result(name: str, measure: float | None, unit: str, baseline: float | None, baseline_unit: str,
           ratio: float | None, goal: str, passed: bool | None, **extra: Any) -> dict[str, Any]:
    """One row of the results table."""
    return {"name": name, "measure": measure, "unit": unit, "baseline": baseline, "baseline_unit": baseline_unit,
            "ratio": ratio, "goal": goal, "pass": passed, **extra}


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.4g}"
    return str(v)


def print_rows(rows: list[dict[str, Any]]) -> None:
    """The table every benchmark prints: measure, baseline, ratio, goal, pass/fail."""
    print(f"{'benchmark':<34}{'measure':>14} {'unit':<12}{'baseline':>14} {'unit':<12}{'ratio':>9}  "
          f"{'goal':<24}{'result':<6}")
    for r in rows:
        verdict = "-" if r["pass"] is None else "PASS" if r["pass"] else "MISS"
        print(f"{r['name']:<34}{fmt(r['measure']):>14} {r['unit']:<12}{fmt(r['baseline']):>14} {r['baseline_unit']:<12}"
              f"{fmt(r['ratio']):>9}  {r['goal']:<24}{verdict:<6}")


def write_json(path: Path | None, data: Any) -> None:
    if path is not None:
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
