"""Register maps: which requests read a device's channels (as few as it allows) and how registers become values.

Pure functions, no I/O. Numbers are decoded by pymodbus's own ``convert_from_registers`` (the client mixin's class
method, pinned pymodbus 3.16), which knows the integer and float types and the word order but not a byte order
inside a register: ``byte_order = "little"`` swaps the two bytes of each register first. One bit of a register is
``(register >> bit) & 1``, bit 0 the least significant as data sheets count: pymodbus's ``BITS`` conversion orders
the bits of a register by byte (it would call the register's bit 8 "bit 0"), which is not what a data sheet means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from pymodbus.client.mixin import ModbusClientMixin

from agent.modbus_config import BIT_TABLES, WIDTH, DeviceSettings

DATATYPE = ModbusClientMixin.DATATYPE
TYPES = {"int16": DATATYPE.INT16, "uint16": DATATYPE.UINT16, "int32": DATATYPE.INT32, "uint32": DATATYPE.UINT32,
         "int64": DATATYPE.INT64, "uint64": DATATYPE.UINT64, "float32": DATATYPE.FLOAT32, "float64": DATATYPE.FLOAT64}
FUNCTION = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}


@dataclass(frozen=True, slots=True)
class Field:
    """One channel's place in a device: table, first address, width in registers (or bits), how to decode it."""

    name: str
    table: str
    address: int
    width: int
    type: str
    bit: int | None
    byte_order: str
    word_order: str
    scale: float
    offset: float


@dataclass(frozen=True, slots=True)
class Request:
    """One read request: ``count`` registers (or bits) of ``table`` from ``address``, and the fields in it."""

    table: str
    address: int
    count: int
    fields: tuple[Field, ...]

    def describe(self) -> str:
        return f"{self.table} {self.address}..{self.address + self.count - 1}"


def fields_of(device: DeviceSettings) -> list[Field]:
    """The device's channels as fields, in map order."""
    out = []
    for name, ch in device.channels.items():
        assert ch.type is not None  # resolved by ChannelMap's validator
        out.append(Field(
            name=name, table=ch.table, address=ch.address, width=WIDTH[ch.type], type=ch.type, bit=ch.bit,
            byte_order=ch.byte_order or device.byte_order, word_order=ch.word_order or device.word_order,
            scale=ch.scale, offset=ch.offset,
        ))
    return out


def plan(device: DeviceSettings) -> list[Request]:
    """The fewest requests that read every channel: neighbours of one table together, each request at most
    ``max_registers`` (``max_bits`` for coils and discrete inputs) long, skipping at most ``max_gap`` unused ones."""
    by_table: dict[str, list[Field]] = {}
    for f in fields_of(device):
        by_table.setdefault(f.table, []).append(f)
    out: list[Request] = []
    for table in ("holding", "input", "coil", "discrete"):
        fields = sorted(by_table.get(table, ()), key=lambda f: (f.address, f.width))
        limit = device.max_bits if table in BIT_TABLES else device.max_registers
        group: list[Field] = []
        start = end = 0  # the group covers [start, end)
        for f in fields:
            f_end = f.address + f.width
            if group and f.address - end <= device.max_gap and max(end, f_end) - start <= limit:
                group.append(f)
                end = max(end, f_end)
                continue
            if group:
                out.append(Request(table, start, end - start, tuple(group)))
            if f.width > limit:
                raise ValueError(f"channel {f.name}: a {f.type} needs {f.width} registers, more than max_registers = {limit}")
            group, start, end = [f], f.address, f_end
        if group:
            out.append(Request(table, start, end - start, tuple(group)))
    return out


def _swap_bytes(regs: Sequence[int]) -> list[int]:
    return [((r & 0xFF) << 8) | (r >> 8) for r in regs]


def value(f: Field, data: Sequence[Any], start: int) -> float:
    """The value of ``f`` from ``data`` (registers, or bits for coils/discrete inputs) read from ``start``."""
    i = f.address - start
    if f.type == "bool":
        raw: float = 1.0 if data[i] else 0.0
    elif f.type == "bit":
        raw = float((data[i] >> f.bit) & 1)
    else:
        regs = list(data[i:i + f.width])
        if f.byte_order == "little":
            regs = _swap_bytes(regs)
        raw = float(ModbusClientMixin.convert_from_registers(regs, TYPES[f.type], word_order=f.word_order))  # type: ignore[arg-type]
    return raw * f.scale + f.offset if (f.scale != 1.0 or f.offset != 0.0) else raw


def decode(req: Request, data: Sequence[Any]) -> dict[str, float]:
    """Every field of ``req`` from the registers (or bits) its answer carried."""
    return {f.name: value(f, data, req.address) for f in req.fields}


def encode(type_: str, v: float, byte_order: str = "big", word_order: str = "big") -> list[int]:
    """Registers holding ``v`` as ``type_`` (the inverse of :func:`value`, for tests, simulators and docs)."""
    t = TYPES[type_]
    regs = ModbusClientMixin.convert_to_registers(int(v) if "int" in type_ else float(v), t, word_order=word_order)  # type: ignore[arg-type]
    return _swap_bytes(regs) if byte_order == "little" else list(regs)
