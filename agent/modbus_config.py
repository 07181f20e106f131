"""Modbus settings: buses, devices and register maps, declared in the configuration file only.

A bus is declared once (``[modbus.buses.rs485-1]``: an RS-485 line or a TCP connection, one owner), a device once
(``[modbus.devices.meter-1]``: a unit id on a named bus, its poll period and register map), and everything else
refers to them by name: ``[source] kind = "modbus"`` polls a list of device names (and, next, ``[[assets]]`` will
name the device their readings come from). A register map does not fit into environment variables, so these
tables have none (docs/modbus.md).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.config_file import KeyProblem

Table = Literal["holding", "input", "coil", "discrete"]
DataType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool", "bit"]
Order = Literal["big", "little"]
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # bus and device names: used in status lines and (next) topics
BIT_TABLES = ("coil", "discrete")
RTU_UNITS = (1, 247)  # Modbus over serial line: 0 is broadcast (no answer), 248-255 are reserved
WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4, "float32": 2, "float64": 4,
         "bool": 1, "bit": 1}  # registers (or bits, for bool in a bit table) a value occupies


class _Strict(BaseModel):
    # finite numbers only, as every settings section (agent/settings.py): TOML writes nan and inf as literals
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class ChannelMap(_Strict):
    """Where one channel's value is and how to read it: value = raw x scale + offset."""

    table: Table = Field("holding", description="holding (function 3), input (4), coil (1) or discrete (2, discrete input).")
    address: int = Field(..., ge=0, le=65535, description="Protocol address, 0-based (data sheet register 40001 or 30001 = address 0). Required.")
    type: DataType | None = Field(None, description="int16, uint16, int32, uint32, int64, uint64, float32, float64, bool (coil or discrete input) or bit (one bit of a register); empty = uint16 for registers, bool for coils and discrete inputs.")
    bit: int | None = Field(None, ge=0, le=15, description="type bit: which bit of the register, 0 = least significant.")
    byte_order: Order | None = Field(None, description="Order of the two bytes inside each register: big (the Modbus standard) or little; empty = the device's.")
    word_order: Order | None = Field(None, description="Order of the registers of a 32/64-bit value: big (high word first) or little; empty = the device's.")
    scale: float = Field(1.0, description="Multiplier applied to the raw value (0.1 for a register in tenths).")
    offset: float = Field(0.0, description="Added after scaling.")

    @model_validator(mode="after")
    def _consistent(self) -> "ChannelMap":
        if self.type is None:
            self.type = "bool" if self.table in BIT_TABLES else "uint16"
        if self.table in BIT_TABLES and self.type != "bool":
            raise ValueError(f"a {self.table} holds one bit: type must be bool")
        if self.table not in BIT_TABLES and self.type == "bool":
            raise ValueError("bool is for coil and discrete tables; for one bit of a register use type = \"bit\" and bit = N")
        if (self.type == "bit") != (self.bit is not None):
            raise ValueError("type bit needs bit = 0..15, and bit is only for type bit")
        if self.address + WIDTH[self.type] - 1 > 65535:
            raise ValueError(f"a {self.type} at address {self.address} runs past address 65535")
        return self


class BusSettings(_Strict):
    """One Modbus line or connection, owned by one thread that polls its devices in turn."""

    kind: Literal["rtu", "tcp"] = Field(..., description="rtu (serial line, RS-485/RS-232) or tcp. Required.")
    port: str = Field("", description="rtu: device path (prefer /dev/serial/by-id/...) or a pyserial URL.")
    baudrate: int = Field(9600, gt=0, description="rtu: line speed in baud.")
    parity: Literal["N", "E", "O"] = Field("N", description="rtu: parity N, E or O (the Modbus standard says E; many devices ship with N).")
    stopbits: int = Field(1, ge=1, le=2, description="rtu: stop bits, 1 or 2.")
    bytesize: int = Field(8, ge=7, le=8, description="rtu: data bits, 7 or 8.")
    echo: bool = Field(False, description="rtu: the adapter echoes what it sends (2-wire RS-485 without echo suppression): discard the echo.")
    host: str = Field("", description="tcp: host name or address of the device or gateway.")
    tcp_port: int = Field(502, ge=1, le=65535, description="tcp: port.")
    timeout_s: float = Field(0.5, gt=0, le=60, description="Per request: give up waiting for the answer after this long.")
    retries: int = Field(1, ge=0, le=10, description="Per request: send it again this many times before counting the device as not answering.")
    gap_s: float = Field(0.01, ge=0, le=10, description="Pause between two requests on this bus (slow devices and some gateways need one).")
    reconnect_min_s: float = Field(0.5, gt=0, description="First retry delay after the adapter or connection disappears.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Cap of the exponential reconnect backoff.")

    @model_validator(mode="after")
    def _kind_fields(self) -> "BusSettings":
        if self.kind == "rtu" and not self.port:
            raise ValueError("an rtu bus needs port (e.g. /dev/serial/by-id/usb-FTDI_...)")
        if self.kind == "tcp" and not self.host:
            raise ValueError("a tcp bus needs host")
        wrong = {"rtu": {"host", "tcp_port"}, "tcp": {"port", "baudrate", "parity", "stopbits", "bytesize", "echo"}}
        given = sorted(self.model_fields_set & wrong[self.kind])
        if given:
            raise ValueError(f"{', '.join(given)} do not apply to a {self.kind} bus")
        return self


class DeviceSettings(_Strict):
    """One Modbus device (unit id) on a declared bus: its poll period and register map."""

    bus: str = Field(..., description="Name of the [modbus.buses.NAME] it is on. Required.")
    unit: int = Field(..., ge=0, le=255, description="Unit id (slave address): 1-247 on an rtu bus (0 is broadcast, 248-255 reserved: refused), 0-255 on tcp. Required.")
    poll_s: float = Field(1.0, ge=0, description="Poll period in seconds; each poll gives one reading stamped at the poll.")
    sensor: str = Field("", pattern=r"^[^/+#]*$", description="Sensor id of its readings; empty = the device's name.")
    byte_order: Order = Field("big", description="Default byte order inside a register for its channels.")
    word_order: Order = Field("big", description="Default word order of 32/64-bit values for its channels.")
    max_registers: int = Field(125, ge=1, le=125, description="Most registers the device answers in one request (neighbouring channels are read together up to this).")
    max_bits: int = Field(2000, ge=1, le=2000, description="Most coils or discrete inputs in one request.")
    max_gap: int = Field(0, ge=0, le=124, description="Unused registers (or bits) read between two channels to save a request; 0 = only adjacent ones (a device may refuse addresses it does not have).")
    backoff_max_s: float = Field(60.0, gt=0, description="While it does not answer, it is retried at its poll period doubling up to this.")
    channels: dict[str, ChannelMap] = Field(..., min_length=1, description="Register map: channel name = {table, address, type, ...}. Required.")

    @field_validator("bus")
    @classmethod
    def _bus_name(cls, v: str) -> str:
        if not v:
            raise ValueError("must name a [modbus.buses.NAME] table")
        return v


class ModbusSettings(_Strict):
    """Modbus buses and devices ([modbus.buses.NAME], [modbus.devices.NAME]; configuration file only)."""

    buses: dict[str, BusSettings] = Field(default_factory=dict)
    devices: dict[str, DeviceSettings] = Field(default_factory=dict)

    @field_validator("buses", "devices")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        import re

        for name in v:
            if not re.match(NAME, name):
                raise ValueError(f"name {name!r}: letters, digits, '_', '.', '-' only, starting with a letter or digit")
        return v

    @model_validator(mode="after")
    def _references(self) -> "ModbusSettings":
        seen: dict[tuple[str, int], str] = {}
        for name, d in self.devices.items():
            # each problem names the device's key (KeyProblem): its line in the file is then found
            if d.bus not in self.buses:
                declared = ", ".join(sorted(self.buses)) or "none"
                raise KeyProblem(("devices", name, "bus"), d.bus, f"bus {d.bus!r} is not declared as "
                                 f"[modbus.buses.{d.bus}] (declared: {declared})")
            if self.buses[d.bus].kind == "rtu" and not RTU_UNITS[0] <= d.unit <= RTU_UNITS[1]:
                raise KeyProblem(("devices", name, "unit"), d.unit, f"on an rtu bus ({d.bus}) the unit id must be "
                                 f"1-247 ({'0 is broadcast: no device answers it' if d.unit == 0 else '248-255 are reserved'})")
            key = (d.bus, d.unit)
            if key in seen:
                raise KeyProblem(("devices", name, "unit"), d.unit,
                                 f"devices {seen[key]} and {name} both have unit {d.unit} on bus {d.bus}")
            seen[key] = name
        return self
