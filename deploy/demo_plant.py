"""A small plant to try ``deploy/gateway.toml.example`` without hardware: two pumps on a Modbus TCP bus and a
compressor on MQTT, all playing the bundled demo recording (SKAB valve1/1.csv).

    .venv/bin/python deploy/demo_plant.py --modbus-port 5020 --mqtt-port 1883 --rate 10

- Modbus TCP on 127.0.0.1:<modbus-port>: unit 1 is ``pump-1`` and plays the whole recording (its fault starts at
  row 572, 0-based: the valve closes); unit 2 is ``pump-2`` and plays only its normal part (rows 0-559), over and over.
  The 8 channels are float32 input registers 0-15 (big-endian, high word first), in the recording's column order.
- MQTT on 127.0.0.1:<mqtt-port>: ``plant/compressor/telemetry`` gets the normal part as JSON objects.

``--rate`` rows per second of wall time (the recording was taken at 1 row/s). It runs until Ctrl-C. This is a demo
helper, not part of the agent (the daemon never imports it).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import signal
import struct
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from agent.bundled import demo_recording_path  # noqa: E402

NORMAL_ROWS = 560  # the recording's rows before its fault (anomaly = 1 from row 572, 0-based)


def read_rows() -> tuple[list[str], list[list[float]]]:
    with open(demo_recording_path(), newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    channels = [c for c in rows[0][1:] if c not in ("anomaly", "changepoint")]
    return channels, [[float(v) for v in r[1:1 + len(channels)]] for r in rows[1:]]


def registers(row: list[float]) -> list[int]:
    out: list[int] = []
    for v in row:
        raw = struct.pack(">f", v)
        out += [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]
    return out


class Clock:
    """Which row is playing: rows advance with wall time at ``rate`` per second."""

    def __init__(self, rate: float):
        self.rate, self.t0 = rate, time.monotonic()

    def index(self, n: int, offset: int = 0) -> int:
        return (int((time.monotonic() - self.t0) * self.rate) + offset) % n


def modbus_server(port: int, clock: Clock, rows: list[list[float]]) -> tuple[asyncio.AbstractEventLoop, ModbusTcpServer]:
    plays = {1: rows, 2: rows[:NORMAL_ROWS]}

    def device(unit: int) -> SimDevice:
        async def action(function: int, start: int, address: int, count: int, regs: list[int], values: object) -> None:
            if function == 4:
                play = plays[unit]
                regs[0:16] = registers(play[clock.index(len(play))])

        table = [SimData(0, values=[0] * 64, datatype=DataType.REGISTERS)]
        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        return SimDevice(unit, simdata=(bits, bits, table, table), action=action)

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, ModbusTcpServer] = {}

    async def main() -> None:
        holder["server"] = ModbusTcpServer([device(1), device(2)], address=("127.0.0.1", port))
        ready.set()
        await holder["server"].serve_forever()

    threading.Thread(target=lambda: loop.run_until_complete(main()), name="modbus", daemon=True).start()
    ready.wait(10)
    return loop, holder["server"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modbus-port", type=int, default=5020)
    ap.add_argument("--mqtt-host", default="127.0.0.1")
    ap.add_argument("--mqtt-port", type=int, default=1883)
    ap.add_argument("--rate", type=float, default=1.0, help="rows per second (default 1: the recording's pace)")
    args = ap.parse_args()
    channels, rows = read_rows()
    clock = Clock(args.rate)
    modbus_server(args.modbus_port, clock, rows)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edge-agent-demo-plant")
    client.connect(args.mqtt_host, args.mqtt_port)
    client.loop_start()
    print(f"demo plant: Modbus TCP 127.0.0.1:{args.modbus_port} (units 1, 2), MQTT {args.mqtt_host}:{args.mqtt_port} "
          f"plant/compressor/telemetry, {args.rate:g} rows/s; Ctrl-C stops", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    normal = rows[:NORMAL_ROWS]
    sent = 0
    while not stop.is_set():
        due = int((time.monotonic() - clock.t0) * args.rate)
        while sent <= due:
            row = normal[(sent + NORMAL_ROWS // 2) % len(normal)]  # half a cycle behind the pumps
            client.publish("plant/compressor/telemetry", json.dumps(dict(zip(channels, row))), qos=0)
            sent += 1
        stop.wait(min(0.2, 1 / args.rate))
    client.loop_stop()
    client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
