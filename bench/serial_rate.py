"""Lines per second through a real pty: our bulk reader + splitter (with and without parsing) vs pyserial readline.

Run from the repository root:  .venv/bin/python bench/serial_rate.py [--lines 200000] [--json out.json]

A forked writer pushes realistic csv lines (SKAB-like: ISO timestamp + 8 channels, ';'-separated) into the pty
master as fast as the reader takes them; each measure runs on a fresh pty and times from the writer's start to
the last line received. The readline baseline reads fewer lines by default (it is ~50x slower); rates compare.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import tty
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import serial  # noqa: E402

from agent.counters import Counters  # noqa: E402
from agent.parse import LineParser  # noqa: E402
from agent.records import Block  # noqa: E402
from agent.settings import SerialSourceSettings  # noqa: E402
from agent.sources import CONNECTED  # noqa: E402
from agent.sources.serial import MAX_READ, LineSplitter, SerialSource  # noqa: E402

CHANNELS = ["datetime", "Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
            "Thermocouple", "Voltage", "Volume Flow RateRMS"]


def make_lines(n: int) -> bytes:
    """``n`` distinct realistic lines, each ending in LF."""
    out = []
    for i in range(n):
        s = i % 60
        m = (i // 60) % 60
        h = (i // 3600) % 24
        out.append(b"2020-03-09 %02d:%02d:%02d;0.0%04d;0.04%03d;1.33%02d;0.054%d;90.0%d;29.3%d;229.3%d;32.0%d\n"
                   % (h, m, s, i % 10000, i % 1000, i % 100, i % 10, i % 7, i % 5, i % 3, i % 9))
    return b"".join(out)


def start_writer(master: int, payload: bytes) -> int:
    """Fork a process that writes ``payload`` to the pty master and exits; returns its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(master, view[:65536]):]
        finally:
            os._exit(0)
    return pid


class Pty:
    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


def timed(n: int, payload: bytes, reader: Callable[[Pty, Callable[[], int]], None]) -> float:
    """Seconds from the writer's start until ``reader`` has taken ``n`` lines."""
    pty = Pty()
    try:
        t0 = 0.0
        pid = -1

        def go() -> int:  # the reader calls this once its port is open (open flushes the input buffer)
            nonlocal t0, pid
            t0 = time.perf_counter()
            pid = start_writer(pty.master, payload)
            return pid

        reader(pty, go)
        elapsed = time.perf_counter() - t0
        os.waitpid(pid, 0)
        return elapsed
    finally:
        pty.close()


def read_readline(n: int) -> Callable[[Pty, Callable[[], int]], None]:
    def reader(pty: Pty, go: Callable[[], int]) -> None:
        with serial.Serial(pty.path, timeout=1) as ser:
            go()
            for _ in range(n):
                if not ser.readline():
                    raise RuntimeError("readline timed out")
    return reader


def read_bulk(n: int, parse: bool) -> Callable[[Pty, Callable[[], int]], None]:
    """The SerialSource read loop without the source around it: read(max(1, in_waiting)) + LineSplitter."""
    parser = LineParser("csv", channels=CHANNELS, delimiter=";", timestamp_field="datetime")

    def reader(pty: Pty, go: Callable[[], int]) -> None:
        splitter = LineSplitter(b"\n", 4096, lambda reason: None)
        splitter.reset(drop_first=False)
        got = 0
        with serial.Serial(pty.path, timeout=1) as ser:
            go()
            while got < n:
                data = ser.read(min(max(1, ser.in_waiting), MAX_READ))
                if not data:
                    raise RuntimeError("read timed out")
                lines = splitter.feed(data)
                if parse:
                    now = time.time()
                    for line in lines:
                        parser.parse(line, now)
                got += len(lines)
    return reader


def read_source(n: int) -> Callable[[Pty, Callable[[], int]], None]:
    """The real SerialSource.run: bulk read, split, parse, count, deliver to a sink."""
    def reader(pty: Pty, go: Callable[[], int]) -> None:
        settings = SerialSourceSettings.model_validate({"port": pty.path, "format": "csv", "channels": CHANNELS,
                                                        "delimiter": ";", "timestamp_field": "datetime"})
        counters = Counters()
        src = SerialSource(settings, counters)
        stop = threading.Event()
        count = [0]

        def sink(record: Any) -> None:
            count[0] += len(record) if isinstance(record, Block) else 1  # a run of lines comes as one Block
            if count[0] >= n:
                stop.set()

        t = threading.Thread(target=src.run, args=(sink, stop), daemon=True)
        t.start()
        while src.state != CONNECTED:
            time.sleep(0.001)
        go()
        if not stop.wait(600):
            raise RuntimeError("source did not deliver all lines")
        src.close()
        t.join(5)
        rejects = counters.snapshot("reject.")
        if rejects:
            raise RuntimeError(f"unexpected rejects {rejects}")
    return reader


def parse_only(lines: list[bytes]) -> float:
    """Lines per second of LineParser.parse alone (no I/O), for scale."""
    parser = LineParser("csv", channels=CHANNELS, delimiter=";", timestamp_field="datetime")
    t0 = time.perf_counter()
    for line in lines:
        parser.parse(line, 0.0)
    return len(lines) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=200_000, help="lines per measure of our reader")
    ap.add_argument("--baseline-lines", type=int, default=20_000, help="lines for the readline baseline")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)

    n, nb = args.lines, args.baseline_lines
    payload = make_lines(max(n, nb))
    line_bytes = len(payload) / max(n, nb)
    body = payload.splitlines()
    ours = payload[: int(line_bytes * n)] if n < nb else payload
    base = b"".join(line + b"\n" for line in body[:nb])

    results: dict[str, Any] = {"line_bytes": round(line_bytes, 1), "lines": n, "baseline_lines": nb}
    rates: dict[str, float] = {}
    rates["readline"] = nb / timed(nb, base, read_readline(nb))
    rates["bulk_split"] = n / timed(n, ours, read_bulk(n, parse=False))
    rates["bulk_split_parse"] = n / timed(n, ours, read_bulk(n, parse=True))
    rates["serial_source"] = n / timed(n, b"\n" + ours, read_source(n))
    rates["parse_only"] = parse_only(body[:n])
    results["lines_per_s"] = {k: round(v) for k, v in rates.items()}
    results["ratio_vs_readline"] = {k: round(v / rates["readline"], 1) for k, v in rates.items() if k != "readline"}

    print(f"{n} lines of {line_bytes:.0f} bytes through a pty (readline baseline: {nb} lines)")
    print(f"{'measure':<18}{'lines/s':>12}{'x readline':>12}")
    for k, v in rates.items():
        print(f"{k:<18}{v:>12,.0f}{v / rates['readline']:>12.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
