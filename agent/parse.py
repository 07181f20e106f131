"""Line formats -> ``Reading``: csv, json and key=value, with an optional NMEA-style checksum (MQTT payloads:
agent.payload, on the same value and timestamp rules).

Pure functions of their input (no I/O, no logging) so the serial and MQTT sources share them and they can be
tested exhaustively. A parser never raises: it returns a ``Reading`` or a short reason string that the source
counts as ``reject.<reason>``. The one non-rejection string is ``HEADER``: a csv header line was read and now
names the columns; the caller counts it (``source.headers``) and emits nothing.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from typing import Any, Iterable, Literal, overload

import orjson

from agent.records import Reading

Format = Literal["csv", "json", "kv"]

HEADER = "header"  # not a rejection: a csv header line set the column names
# Every rejection reason a parser can return (the source adds line_too_long and partial_line).
REASONS = frozenset({"empty", "checksum", "not_utf8", "malformed", "field_count", "no_header", "bad_timestamp"})

# Control characters other than tab: a line holding them is line noise or binary, not text from a sensor.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_KV_EQ = re.compile(r"\s*=\s*")
_KV_SEP = re.compile(r"[\s,;]+")
_LETTER = re.compile(r"[^\W\d]")
# Epoch values this large cannot be seconds (year > 5000): they are milliseconds, which many devices send.
_MS_FROM = 1e11
_MS_TO = 1e14
_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=timezone.utc)
_FLOATS = frozenset({float})


def xor_checksum(data: bytes | bytearray) -> int:
    """XOR of all bytes of ``data`` (the NMEA checksum), 0 for no bytes."""
    width = len(data)
    x = int.from_bytes(data, "little")
    # Fold the integer onto itself: XOR of the two halves keeps the XOR of all bytes; log2(n) big-int steps.
    while width > 1:
        half = (width + 1) // 2
        bits = 8 * half
        x = (x >> bits) ^ (x & ((1 << bits) - 1))
        width = half
    return x


def with_checksum(body: bytes, dollar: bool = False) -> bytes:
    """``body`` with its ``*hh`` checksum appended (and a leading ``$`` when asked): for devices, tests, docs."""
    return (b"$" if dollar else b"") + body + b"*%02X" % xor_checksum(body)


def _strip_checksum(raw: bytes | bytearray) -> bytes | bytearray | None:
    """The line without ``$`` and ``*hh`` when the checksum is present and right, else None."""
    star = raw.rfind(b"*")
    if star < 0 or len(raw) - star != 3 or raw[star + 1] not in _HEX or raw[star + 2] not in _HEX:
        return None
    body = raw[1:star] if raw[:1] == b"$" else raw[:star]
    if xor_checksum(body) != int(raw[star + 1:], 16):
        return None
    return body


def number(text: str) -> float | str:
    """``text`` as a float when it reads as a number (also quoted, nan, inf), else its stripped raw text."""
    try:
        return float(text)
    except ValueError:
        pass
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] == '"':
        t = t[1:-1]
        try:
            return float(t)
        except ValueError:
            pass
    return t


@overload
def iso(ts: float) -> str: ...
@overload
def iso(ts: None) -> None: ...
@overload
def iso(ts: float | None) -> str | None: ...
def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds (``2020-03-09T10:34:33.000Z``): the agent's format, read back by
    ``timestamp``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def timestamp(value: Any) -> float | None:
    """Epoch seconds from a device timestamp (number, numeric text in s or ms, ISO 8601 text), None if unusable.

    ISO text without a zone is taken as UTC.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        s = value.strip().strip('"')
        if s[4:5] != "-":  # not YYYY-...: try a number first
            try:
                value = float(s)
            except ValueError:
                return _iso(s)
        else:
            return _iso(s)
    if not isinstance(value, (int, float)):
        return None
    try:
        ts = float(value)
    except OverflowError:
        return None
    if not math.isfinite(ts) or ts < 0:
        return None
    if _MS_FROM <= ts < _MS_TO:
        ts /= 1000.0
    elif ts >= _MS_TO:
        return None
    return ts


def _iso(s: str) -> float | None:
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    # Subtracting the epoch is exact and ~4x faster than dt.timestamp() (which goes through the C library).
    ts = ((dt - _EPOCH) if dt.tzinfo is None else (dt - _EPOCH_UTC)).total_seconds()
    return ts if ts >= 0 else None


def loads_json(text: str) -> Any:
    """``json.loads(text)``, by orjson where it takes the text: about 6x faster on a sensor's object of floats (0.7
    against 4 µs for 8 channels), most of the cost of a message at high rates. What orjson refuses (NaN and
    Infinity, numbers past the float range, lone surrogates, nesting deeper than 1,024) goes to ``json.loads``, and
    what it takes means what json made of it: floats are correctly rounded by both (the same bits); an integer past
    64 bits comes as the float ``float(int)`` gives (the value a reading holds either way). Two differences, both
    harmless: nesting between ~990 and 1,024 levels, which json refused with RecursionError (how deep depended on
    the thread's stack), is now read; and a payload holding NaN or Infinity is parsed twice (~1.7x json's cost for
    it). Raises ValueError (or RecursionError) as ``json.loads`` does."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _json_value(v: Any) -> float | str:
    """A JSON value as a channel value: numbers as floats, numeric strings too, anything else as its text."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        try:
            return float(v)
        except OverflowError:
            return str(v)
    if isinstance(v, str):
        return number(v)
    if v is None:
        return "null"
    return json.dumps(v, separators=(",", ":"))


def _from_object(obj: dict[str, Any], ts_field: str, received_ts: float, sensor: str, asset: str = "") -> Reading | str:
    """A Reading from a decoded JSON object: channel -> value, plus the optional timestamp field. Takes ``obj`` over
    (a freshly decoded object): in the common case, every value a JSON number with a fraction, it becomes the
    reading's values as it is."""
    ts = received_ts
    if ts_field in obj:
        t = timestamp(obj.pop(ts_field))
        if t is None:
            return "bad_timestamp"
        ts = t
    if obj and _FLOATS.issuperset(map(type, obj.values())):
        return Reading(ts, obj, sensor, asset)
    values: dict[str, float | str] = {}
    for k, v in obj.items():
        tv = type(v)
        if tv is float:  # the common case: one type check, no call
            values[k] = v
        elif tv is int:
            try:
                values[k] = float(v)
            except OverflowError:
                values[k] = str(v)
        else:
            values[k] = _json_value(v)
    if not values:
        return "empty"
    return Reading(ts, values, sensor, asset)


def _decode(raw: bytes | bytearray) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text[1:] if text[:1] == "\ufeff" else text


def _is_name(field: str) -> bool:
    if not _LETTER.search(field) or not isinstance(number(field), str):
        return False
    try:
        datetime.fromisoformat(field)
    except ValueError:
        return True
    return False  # an ISO timestamp is data, not a column name


class LineParser:
    """Parses one line (terminator already removed) of a csv, json or kv stream into a Reading or a reason."""

    def __init__(
        self,
        format: Format = "csv",
        channels: Iterable[str] = (),
        delimiter: str = ",",
        checksum: bool = False,
        timestamp_field: str = "ts",
        sensor: str = "",
    ) -> None:
        if format not in ("csv", "json", "kv"):
            raise ValueError(f"unknown line format {format!r}: csv, json or kv")
        if len(delimiter) != 1:
            raise ValueError("delimiter must be one character")
        self.format = format
        self.channels: tuple[str, ...] = tuple(c.strip() for c in channels if c.strip())
        self.delimiter = delimiter
        self.checksum = checksum
        self.timestamp_field = timestamp_field
        self.sensor = sensor
        # csv column names: the configured channels until the device sends a header line.
        self.columns: tuple[str, ...] | None = None
        self._ts_index = -1
        self._value_names: tuple[str, ...] = ()
        if self.channels:
            self._set_columns(self.channels)
        self._parse_text = {"csv": self._csv, "json": self._json, "kv": self._kv}[format]

    @classmethod
    def from_settings(cls, settings: Any) -> LineParser:
        """A parser configured like ``SerialSourceSettings`` (format, channels, delimiter, checksum, ...)."""
        return cls(
            format=settings.format, channels=settings.channels, delimiter=settings.delimiter,
            checksum=settings.checksum, timestamp_field=settings.timestamp_field, sensor=settings.sensor,
        )

    def parse(self, line: bytes | bytearray, received_ts: float) -> Reading | str:
        """A Reading, ``HEADER``, or a rejection reason from ``REASONS``; never raises."""
        try:
            raw = line.strip()
            if not raw:
                return "empty"
            if self.checksum:
                body = _strip_checksum(raw)
                if body is None:
                    return "checksum"
                raw = body.strip()
                if not raw:
                    return "empty"
            text = _decode(raw)
            if text is None:
                return "not_utf8"
            if _CONTROL.search(raw) is not None:
                return "malformed"
            return self._parse_text(text, received_ts)
        except Exception:  # a bug here must cost one line, not the source thread
            return "malformed"

    def _set_columns(self, cols: tuple[str, ...]) -> None:
        self.columns = cols
        self._ts_index = cols.index(self.timestamp_field) if self.timestamp_field in cols else -1
        self._value_names = tuple(c for c in cols if c != self.timestamp_field)

    def _csv(self, text: str, received_ts: float) -> Reading | str:
        fields = text.split(self.delimiter)
        cols = self.columns
        # Fast path, the common case: the right number of fields, all numbers, a readable timestamp.
        if cols is not None and len(fields) == len(cols) and self._value_names:
            ts: float | None = received_ts
            if self._ts_index >= 0:
                ts = timestamp(fields.pop(self._ts_index))
            if ts is not None:
                try:
                    floats = list(map(float, fields))
                except ValueError:
                    pass
                else:
                    return Reading(ts=ts, values=dict(zip(self._value_names, floats)), sensor=self.sensor)
            fields = text.split(self.delimiter)
        return self._csv_slow(fields, received_ts)

    def _csv_slow(self, fields: list[str], received_ts: float) -> Reading | str:
        values = [number(f) for f in fields]
        cols = self.columns
        if all(isinstance(v, str) for v in values) and self._take_header(values):  # type: ignore[arg-type]
            return HEADER
        if cols is None:
            return "no_header"
        if len(values) != len(cols):
            if len(values) == len(cols) + 1 and values[-1] == "":
                values.pop()  # a trailing delimiter
            else:
                return "field_count"
        ts = received_ts
        out: dict[str, float | str] = {}
        for name, v in zip(cols, values):
            if name == self.timestamp_field:
                t = timestamp(v)
                if t is None:
                    return "bad_timestamp"
                ts = t
            else:
                out[name] = v
        if not out:
            return "empty"
        return Reading(ts=ts, values=out, sensor=self.sensor)

    def _take_header(self, fields: list[str]) -> bool:
        """Adopt ``fields`` as the column names if they look like a header line; True if adopted."""
        names = [f.strip().strip('"').strip() for f in fields]
        if not all(_is_name(n) for n in names) or len(set(names)) != len(names):
            return False
        if self.channels:
            if not set(names) & (set(self.channels) | {self.timestamp_field}):
                return False  # with channels configured, only a header naming at least one of them is trusted
        elif self.columns is not None and len(names) < 2:
            return False  # a one-word status line ("READY") must not replace a known header
        self._set_columns(tuple(names))
        return True

    def _json(self, text: str, received_ts: float) -> Reading | str:
        try:
            obj = loads_json(text)
        except (ValueError, RecursionError):
            return "malformed"
        if not isinstance(obj, dict):
            return "malformed"
        return _from_object(obj, self.timestamp_field, received_ts, self.sensor)

    def _kv(self, text: str, received_ts: float) -> Reading | str:
        ts = received_ts
        out: dict[str, float | str] = {}
        for tok in _KV_SEP.split(_KV_EQ.sub("=", text)):
            if not tok:
                continue
            name, eq, val = tok.partition("=")
            if not eq or not name:
                return "malformed"
            if name == self.timestamp_field:
                t = timestamp(val)
                if t is None:
                    return "bad_timestamp"
                ts = t
            else:
                out[name] = number(val)
        if not out:
            return "empty"
        return Reading(ts=ts, values=out, sensor=self.sensor)

def duration_text(seconds: float) -> str:
    """A teach-in duration as it is written in the settings: 604800 → 7d, 5400 → 90m, 45 → 45s (else seconds)."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
