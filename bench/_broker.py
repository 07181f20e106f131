"""A private mosquitto on a free loopback port for the benchmarks (no pytest: bench/ runs without the test deps).

Same configuration as the tests' broker (tests/conftest.py): ``listener <port> 127.0.0.1``, anonymous,
no persistence, ``set_tcp_nodelay true``. Use as a context manager; it is stopped by its own pid.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_exe() -> str:
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None:
        raise SystemExit("mosquitto not found: install it with `sudo apt-get install -y mosquitto`")
    return exe


def mosquitto_version() -> str:
    try:
        out = subprocess.run([mosquitto_exe(), "-h"], check=False, capture_output=True, text=True, timeout=5).stdout
        return out.splitlines()[0].replace("mosquitto version ", "").strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


class Broker:
    """``with Broker() as b: ... b.port``"""

    def __init__(self, extra_conf: str = ""):
        self.exe = mosquitto_exe()
        self.port = free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-broker-")
        self.workdir = Path(self._tmp.name)
        self.conf = self.workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
            f"max_queued_messages 1000000\n{extra_conf}"
        )
        self.log = self.workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Broker":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening within 10 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self._tmp.cleanup()
