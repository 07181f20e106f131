"""Modbus polls per second: the real ModbusSource against a bare pymodbus client loop, same server, same run.

Run from the repository root:  .venv/bin/python bench/modbus_rate.py [--polls 3000] [--rounds 3] [--json out.json]

A pymodbus ``ModbusTcpServer`` (3.16, ``SimDevice``) runs in a separate process on a free loopback port with one
device whose 16 input registers hold 8 float32 values. The **baseline** is the loop a user would write by hand:
``read_input_registers(0, count=16)`` and ``convert_from_registers(..., FLOAT32)`` on a ``ModbusTcpClient``, as
fast as it goes. The **measure** is ``ModbusSource`` with the same device as 8 float32 channels, ``poll_s = 0`` and
``gap_s = 0``, timed from its first to its ``N``-th reading handed to the sink (a counting sink: the pipeline is
not part of this). Both run in this process, alternately, ``--rounds`` times each; the best round of each is
compared (the slower ones measure the neighbours on a shared machine). Goal: ≥ 0.8×.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import print_rows, result, write_json  # noqa: E402

GOAL = 0.8
VALUES = [0.0271, 0.0396, 0.8713, 0.0547, 75.4955, 25.8338, 244.091, 32.0]


def serve(port: int) -> None:
    """The server process: one device, 8 float32 input registers, until killed."""
    from pymodbus.client.mixin import ModbusClientMixin
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    regs = ModbusClientMixin.convert_to_registers(VALUES, ModbusClientMixin.DATATYPE.FLOAT32)
    table = [SimData(0, values=regs + [0] * 16, datatype=DataType.REGISTERS)]
    device = SimDevice(1, simdata=(
        [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
        [SimData(0, values=[False] * 16, datatype=DataType.BITS)], table, table))

    async def main() -> None:
        server = ModbusTcpServer([device], address=("127.0.0.1", port))
        print("listening", flush=True)
        await server.serve_forever()

    asyncio.run(main())


def baseline(port: int, polls: int) -> float:
    """Polls/s of the bare client loop (read + convert)."""
    from pymodbus.client import ModbusTcpClient

    c = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    assert c.connect()
    f32 = c.DATATYPE.FLOAT32
    try:
        c.read_input_registers(0, count=16, device_id=1)  # warm up the connection
        t0 = time.perf_counter()
        for _ in range(polls):
            rr = c.read_input_registers(0, count=16, device_id=1)
            values = c.convert_from_registers(rr.registers, f32)
        took = time.perf_counter() - t0
        assert values[6] == VALUES[6] or abs(values[6] - VALUES[6]) < 1e-3  # type: ignore[index]
    finally:
        c.close()
    return polls / took


def measure(port: int, polls: int) -> float:
    """Polls/s of ModbusSource (poll, decode 8 channels, stamp, hand a Reading to the sink)."""
    from agent.counters import Counters
    from agent.modbus_config import ModbusSettings
    from agent.settings import ModbusSourceSettings
    from agent.sources.modbus import ModbusSource

    channels = {f"c{i}": {"table": "input", "address": 2 * i, "type": "float32"} for i in range(8)}
    m = ModbusSettings.model_validate({
        "buses": {"plc": {"kind": "tcp", "host": "127.0.0.1", "tcp_port": port, "gap_s": 0, "timeout_s": 2,
                          "retries": 0}},
        "devices": {"d": {"bus": "plc", "unit": 1, "poll_s": 0, "channels": channels}},
    })
    src = ModbusSource(ModbusSourceSettings(), m, Counters())
    stamps: list[float] = []
    done = threading.Event()
    last: list[Any] = []

    def sink(r: Any) -> None:
        stamps.append(time.perf_counter())
        if len(stamps) == polls + 1:
            last.append(r)
            done.set()

    stop = threading.Event()
    t = threading.Thread(target=src.run, args=(sink, stop), daemon=True)
    t.start()
    if not done.wait(300):
        raise RuntimeError(f"only {len(stamps)} readings in 300 s")
    stop.set()
    t.join(10)
    assert abs(last[0].values["c6"] - VALUES[6]) < 1e-3
    return polls / (stamps[polls] - stamps[0])  # from the first reading: the connect is not a poll


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--polls", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    import logging

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    port = _free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        time.sleep(0.3)
        base, meas = [], []
        for _ in range(args.rounds):
            base.append(baseline(port, args.polls))
            meas.append(measure(port, args.polls))
    finally:
        server.kill()
        server.wait()
    b, m = max(base), max(meas)
    ratio = m / b
    row = result("modbus polls/s (ModbusSource, TCP)", round(m, 1), "polls/s", round(b, 1), "polls/s bare client",
                 round(ratio, 3), ">= 0.8x", ratio >= GOAL, rounds={"source": meas, "bare_client": base},
                 polls=args.polls, registers_per_poll=16, channels=8)
    print_rows([row])
    write_json(args.json, [row])
    return 0


if __name__ == "__main__":
    sys.exit(run())
