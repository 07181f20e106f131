"""Table-driven tests of the line and payload parsers (block payloads too), plus property tests: any bytes in, never an
exception."""

from __future__ import annotations

import functools
import json
import math
import operator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.parse import HEADER, REASONS, LineParser, number, timestamp, with_checksum, xor_checksum
from agent.payload import BLOCK_REASONS, Coalescer, PayloadParser, coalesce
from agent.records import BLOCK_MIN
from agent.records import Block, Reading
from agent.settings import SerialSourceSettings

RX = 1_700_000_000.0  # time of receipt handed to the parser
ISO_TS = 1_704_067_200.0  # 2024-01-01T00:00:00Z


def parse(line: bytes, **kw: object) -> Reading | str:
    return LineParser(**kw).parse(line, RX)  # type: ignore[arg-type]


# (parser kwargs, line, expected values or reason, expected ts)
CASES = [
    # csv with configured channels
    ({"format": "csv", "channels": ["a", "b"]}, b"1.5,2", {"a": 1.5, "b": 2.0}, RX),
    ({"format": "csv", "channels": ["a", "b"]}, b" 1.5 , -2e3 \r", {"a": 1.5, "b": -2000.0}, RX),
    ({"format": "csv", "channels": ["a", "b"]}, b"1,ERR", {"a": 1.0, "b": "ERR"}, RX),
    ({"format": "csv", "channels": ["a", "b"]}, b'"1",""', {"a": 1.0, "b": ""}, RX),
    ({"format": "csv", "channels": ["a", "b"]}, b"1,2,", {"a": 1.0, "b": 2.0}, RX),  # trailing delimiter
    ({"format": "csv", "channels": ["a", "b"]}, b"1", "field_count", None),
    ({"format": "csv", "channels": ["a", "b"]}, b"1,2,3", "field_count", None),
    ({"format": "csv", "channels": ["a", "b"], "delimiter": ";"}, b"1;2", {"a": 1.0, "b": 2.0}, RX),
    ({"format": "csv", "channels": ["ts", "a"]}, b"1700000123.25,1", {"a": 1.0}, 1_700_000_123.25),
    ({"format": "csv", "channels": ["ts", "a"]}, b"1700000123250,1", {"a": 1.0}, 1_700_000_123.25),  # ms
    ({"format": "csv", "channels": ["ts", "a"]}, b"2024-01-01T00:00:00Z,1", {"a": 1.0}, ISO_TS),
    ({"format": "csv", "channels": ["ts", "a"]}, b"2024-01-01 01:00:00+01:00,1", {"a": 1.0}, ISO_TS),
    ({"format": "csv", "channels": ["ts", "a"]}, b"2024-01-01T00:00:00,1", {"a": 1.0}, ISO_TS),  # naive = UTC
    ({"format": "csv", "channels": ["ts", "a"]}, b"yesterday-ish,1", "bad_timestamp", None),
    ({"format": "csv", "channels": ["ts", "a"]}, b"-5,1", "bad_timestamp", None),
    ({"format": "csv", "channels": ["time", "a"], "timestamp_field": "time"}, b"7,1", {"a": 1.0}, 7.0),
    ({"format": "csv"}, b"1,2", "no_header", None),
    ({"format": "csv", "channels": ["a", "b"]}, b"nan,inf", {"a": math.nan, "b": math.inf}, RX),
    # json
    ({"format": "json"}, b'{"a": 1, "b": -2.5}', {"a": 1.0, "b": -2.5}, RX),
    ({"format": "json"}, b'{"a": "3.5", "b": "open"}', {"a": 3.5, "b": "open"}, RX),
    ({"format": "json"}, b'{"a": true, "b": null, "c": [1]}', {"a": "true", "b": "null", "c": "[1]"}, RX),
    ({"format": "json"}, b'{"ts": 1700000123.5, "a": 1}', {"a": 1.0}, 1_700_000_123.5),
    ({"format": "json"}, b'{"ts": "1700000123.5", "a": 1}', {"a": 1.0}, 1_700_000_123.5),
    ({"format": "json"}, b'{"ts": "2024-01-01T00:00:00Z", "a": 1}', {"a": 1.0}, ISO_TS),
    ({"format": "json"}, b'{"ts": "2024-01-01T02:00:00.000+02:00", "a": 1}', {"a": 1.0}, ISO_TS),
    ({"format": "json", "timestamp_field": "t"}, b'{"t": 5, "ts": 9}', {"ts": 9.0}, 5.0),
    ({"format": "json"}, b'{"ts": "soon", "a": 1}', "bad_timestamp", None),
    ({"format": "json"}, b'{"ts": true, "a": 1}', "bad_timestamp", None),
    ({"format": "json"}, b'{"ts": 1e400, "a": 1}', "bad_timestamp", None),
    ({"format": "json"}, b'{"ts": 5}', "empty", None),
    ({"format": "json"}, b"[1, 2]", "malformed", None),
    ({"format": "json"}, b'{"a": 1', "malformed", None),
    ({"format": "json"}, b"[" * 100_000, "malformed", None),
    # kv: spaces, commas, semicolons, spaces around '='
    ({"format": "kv"}, b"a=1 b=2", {"a": 1.0, "b": 2.0}, RX),
    ({"format": "kv"}, b"a=1,b=2", {"a": 1.0, "b": 2.0}, RX),
    ({"format": "kv"}, b"a=1;b=2", {"a": 1.0, "b": 2.0}, RX),
    ({"format": "kv"}, b"a = 1 ; b=2,  c=x", {"a": 1.0, "b": 2.0, "c": "x"}, RX),
    ({"format": "kv"}, b"ts=2024-01-01T00:00:00Z a=1", {"a": 1.0}, ISO_TS),
    ({"format": "kv"}, b"a=1 b", "malformed", None),
    ({"format": "kv"}, b"=1", "malformed", None),
    ({"format": "kv"}, b"ts=1", "empty", None),
    # checksum: good (with and without '$'), wrong, missing, not hex
    ({"format": "kv", "checksum": True}, with_checksum(b"a=1 b=2"), {"a": 1.0, "b": 2.0}, RX),
    ({"format": "csv", "channels": ["a", "b"], "checksum": True}, with_checksum(b"1,2", dollar=True),
     {"a": 1.0, "b": 2.0}, RX),
    ({"format": "json", "checksum": True}, with_checksum(b'{"a":1}').lower(), {"a": 1.0}, RX),
    ({"format": "kv", "checksum": True}, b"a=1*00", "checksum", None),
    ({"format": "kv", "checksum": True}, b"a=1", "checksum", None),
    ({"format": "kv", "checksum": True}, b"a=1*zz", "checksum", None),
    ({"format": "kv", "checksum": True}, b"a=1*+4", "checksum", None),
    ({"format": "kv", "checksum": True}, b"*00", "empty", None),
    # line-level reasons, any format
    ({"format": "csv", "channels": ["a"]}, b"", "empty", None),
    ({"format": "json"}, b"  \r", "empty", None),
    ({"format": "csv", "channels": ["a"]}, b"\xff\xfe\x00\x81", "not_utf8", None),
    ({"format": "kv"}, b"a=\xc3", "not_utf8", None),
    ({"format": "csv", "channels": ["a", "b"]}, b"1\x00,2", "malformed", None),
    ({"format": "json"}, b'{"a":\x1b1}', "malformed", None),
    ({"format": "csv", "channels": ["a"]}, b"\xef\xbb\xbf42", {"a": 42.0}, RX),  # UTF-8 BOM
]


@pytest.mark.parametrize("kw,line,expected,ts", CASES, ids=[repr(c[1][:40]) for c in CASES])
def test_parse_table(kw: dict[str, Any], line: bytes, expected: dict[str, Any] | str, ts: float | None) -> None:
    result = parse(line, sensor="s1", **kw)
    if isinstance(expected, str):
        assert result == expected
        assert expected in REASONS
        return
    assert isinstance(result, Reading), result
    assert result.sensor == "s1"
    assert result.ts == pytest.approx(ts)
    assert set(result.values) == set(expected)
    for k, v in expected.items():
        got = result.values[k]
        if isinstance(v, float) and math.isnan(v):
            assert isinstance(got, float) and math.isnan(got)
        else:
            assert got == v and type(got) is type(v)


def test_csv_header_line_names_columns() -> None:
    p = LineParser("csv", sensor="pump")
    assert p.parse(b"1,2,3", RX) == "no_header"  # lines before the header
    assert p.parse(b"ts,Current,Volume Flow RateRMS", RX) == HEADER
    r = p.parse(b"1700000001,4.5,x", RX)
    assert isinstance(r, Reading)
    assert r.ts == 1_700_000_001.0 and dict(r.values) == {"Current": 4.5, "Volume Flow RateRMS": "x"}
    assert p.parse(b"READY", RX) == "field_count"  # a one-word status line does not replace a known header
    assert p.parse(b'"b";"a"', RX) == "field_count"  # delimiter is ',' here: one field
    assert p.parse(b'"b","a"', RX) == HEADER  # a device that reboots may send a new header; quotes stripped
    r = p.parse(b"1,2", RX)
    assert isinstance(r, Reading) and dict(r.values) == {"b": 1.0, "a": 2.0}


def test_csv_header_overrides_configured_order_only_when_it_names_a_channel() -> None:
    p = LineParser("csv", channels=["a", "b"])
    assert p.parse(b"ERR,OVF", RX) == Reading(RX, {"a": "ERR", "b": "OVF"})  # text data, not a header
    assert p.parse(b"ERR,ERR", RX) == Reading(RX, {"a": "ERR", "b": "ERR"})
    assert p.parse(b"b,a", RX) == HEADER
    assert p.parse(b"1,2", RX) == Reading(RX, {"b": 1.0, "a": 2.0})
    # an ISO timestamp plus text values is a data line, not a header
    q = LineParser("csv", channels=["ts", "state"])
    r = q.parse(b"2024-01-01T00:00:00Z,OPEN", RX)
    assert isinstance(r, Reading) and r.ts == ISO_TS and dict(r.values) == {"state": "OPEN"}


def test_from_settings() -> None:
    s = SerialSourceSettings.model_validate({"port": "/dev/null", "format": "csv", "channels": "a, b", "delimiter": ";",
                                             "checksum": True, "timestamp_field": "t", "sensor": "boiler"})
    p = LineParser.from_settings(s)
    assert (p.format, p.channels, p.delimiter, p.checksum, p.timestamp_field, p.sensor) == (
        "csv", ("a", "b"), ";", True, "t", "boiler")
    assert p.parse(with_checksum(b"1;2"), RX) == Reading(RX, {"a": 1.0, "b": 2.0}, "boiler")


def test_bad_construction_raises() -> None:
    with pytest.raises(ValueError):
        LineParser("xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LineParser("csv", delimiter=";;")


PAYLOADS = [
    (b"12.5", {"temp": 12.5}, RX),
    (b" 12.5\n", {"temp": 12.5}, RX),
    (b"-3", {"temp": -3.0}, RX),
    (b"nan", {"temp": math.nan}, RX),
    (b'"7.25"', {"temp": 7.25}, RX),
    (b'"OVF"', {"temp": "OVF"}, RX),
    (b'{"a": 1, "b": "x"}', {"a": 1.0, "b": "x"}, RX),
    (b'{"a": 1, "ts": "2024-01-01T00:00:00Z"}', {"a": 1.0}, ISO_TS),
    (b'{"a": 1, "ts": 1704067200000}', {"a": 1.0}, ISO_TS),
    (b"", "empty", None),
    (b"{}", "empty", None),
    (b"hello", "malformed", None),
    (b"true", "malformed", None),
    (b"null", "malformed", None),
    (b"[1, 2]", "malformed", None),
    (b'{"ts": "x", "a": 1}', "bad_timestamp", None),
    (b"\x80\x81", "not_utf8", None),
]


@pytest.mark.parametrize("payload,expected,ts", PAYLOADS, ids=[repr(p[0]) for p in PAYLOADS])
def test_payload_table(payload: bytes, expected: dict[str, Any] | str, ts: float | None) -> None:
    result = PayloadParser(channel="temp", sensor="default").parse(payload, RX, sensor="tank-3")
    if isinstance(expected, str):
        assert result == expected and expected in REASONS
        return
    assert isinstance(result, Reading), result
    assert result.sensor == "tank-3" and result.ts == pytest.approx(ts)
    assert set(result.values) == set(expected)
    for k, v in expected.items():
        got = result.values[k]
        assert (isinstance(got, float) and math.isnan(got)) if isinstance(v, float) and math.isnan(v) else got == v


def test_payload_sensor_defaults_to_parser_sensor() -> None:
    r = PayloadParser(sensor="default").parse(b"1", RX)
    assert isinstance(r, Reading) and r.sensor == "default" and dict(r.values) == {"value": 1.0}


def test_helpers() -> None:
    assert with_checksum(b"GPGGA,1", dollar=True) == b"$GPGGA,1*%02X" % functools.reduce(operator.xor, b"GPGGA,1")
    assert xor_checksum(b"") == 0
    assert number(" 4 ") == 4.0 and number("x ") == "x"
    assert timestamp("2024-01-01T00:00:00Z") == ISO_TS and timestamp(None) is None and timestamp(True) is None
    assert timestamp(float("nan")) is None and timestamp(1e20) is None


# --- block payloads: one timestamp, a sample period, an array per channel -> one Block ---------------------------

def block(obj: dict[str, Any], **kw: Any) -> Block | Reading | str:
    return PayloadParser(**kw).parse(json.dumps(obj).encode(), RX, sensor="shaft", asset="press-2")


def test_block_payload_is_one_block_in_columns() -> None:
    b = block({"ts": 1732960000.0, "period_s": 0.001, "values": {"accel_x": [0.5, 1, -2.25], "accel_y": [3, 4, 5]},
               "unit": "g"})  # other keys: ignored
    assert isinstance(b, Block) and len(b) == 3
    assert b.channels == ("accel_x", "accel_y") and b.sensor == "shaft" and b.asset == "press-2"
    assert b.values.tolist() == [[0.5, 3.0], [1.0, 4.0], [-2.25, 5.0]] and b.values.flags.c_contiguous
    assert b.ts.tolist() == pytest.approx([1732960000.0, 1732960000.001, 1732960000.002], abs=1e-7)
    rows = b.rows()  # the readings it stands for
    assert [dict(r.values) for r in rows][1] == {"accel_x": 1.0, "accel_y": 4.0}
    assert all(r.sensor == "shaft" and r.asset == "press-2" for r in rows)


def test_block_timestamps_and_nulls() -> None:
    b = block({"ts": "2024-01-01T00:00:00Z", "period_s": 2, "values": {"i": [1, None]}})
    assert isinstance(b, Block) and b.ts.tolist() == [ISO_TS, ISO_TS + 2]
    assert b.values[0, 0] == 1.0 and math.isnan(b.values[1, 0])  # null: a sample without a number
    b = block({"ts": 1732960000123, "period_s": 0.5, "values": {"i": [1, 2]}})  # milliseconds, as for readings
    assert isinstance(b, Block) and b.ts.tolist() == [1732960000.123, 1732960000.623]
    b = block({"period_s": 0.25, "values": {"i": [1, 2, 3]}})  # no timestamp: the LAST sample is the receipt
    assert isinstance(b, Block) and b.ts.tolist() == [RX - 0.5, RX - 0.25, RX]
    b = block({"time": 100.0, "period_s": 1, "values": {"i": [1]}}, timestamp_field="time")
    assert isinstance(b, Block) and b.ts.tolist() == [100.0]


BAD_BLOCKS = [
    ({"ts": 1, "period_s": 0.1, "values": {"a": [1, 2], "b": [1]}}, "block_length_mismatch"),
    ({"ts": 1, "period_s": 0.1, "values": {"a": [1, 2], "b": 3}}, "block_not_array"),
    ({"ts": 1, "period_s": 0.1, "values": {"a": [1, "2"]}}, "block_not_number"),
    ({"ts": 1, "period_s": 0.1, "values": {"a": [1, True]}}, "block_not_number"),
    ({"ts": 1, "period_s": 0.1, "values": {"a": [1, [2]]}}, "block_not_number"),
    ({"ts": 1, "period_s": 0.1, "values": {"a": [1, {"x": 2}]}}, "block_not_number"),
    ({"ts": 1, "period_s": 0.1, "values": {"a": [10 ** 400]}}, "block_not_number"),
    ({"ts": 1, "period_s": 0.1, "values": {"a": [], "b": []}}, "block_empty"),
    ({"ts": 1, "values": {"a": [1, 2]}}, "block_no_period"),
    ({"ts": 1, "period_s": None, "values": {"a": [1, 2]}}, "block_no_period"),
    ({"ts": 1, "period_s": 0, "values": {"a": [1, 2]}}, "block_bad_period"),
    ({"ts": 1, "period_s": -0.1, "values": {"a": [1, 2]}}, "block_bad_period"),
    ({"ts": 1, "period_s": "0.1", "values": {"a": [1, 2]}}, "block_bad_period"),
    ({"ts": 1, "period_s": True, "values": {"a": [1, 2]}}, "block_bad_period"),
    ({"ts": 1e9, "period_s": 1e-300, "values": {"a": [1, 2]}}, "block_bad_period"),  # below the ts resolution
    ({"ts": 1, "period_s": 1e308, "values": {"a": [1, 2, 3]}}, "block_bad_period"),
    ({"period_s": 1e10, "values": {"a": [1, 2]}}, "block_bad_period"),  # no ts: the first sample before 1970
    ({"ts": "yesterday", "period_s": 0.1, "values": {"a": [1, 2]}}, "bad_timestamp"),
    ({"ts": 1, "period_s": 0.1, "values": {"a": list(range(11))}}, "block_too_large"),
]


@pytest.mark.parametrize("obj,reason", BAD_BLOCKS, ids=[r for _, r in BAD_BLOCKS])
def test_block_refused_whole_with_its_reason(obj: dict[str, Any], reason: str) -> None:
    assert block(obj, max_block_samples=10) == reason
    assert reason in BLOCK_REASONS | REASONS


def test_block_limit_is_inclusive_and_period_inf_refused() -> None:
    assert isinstance(block({"ts": 1, "period_s": 0.1, "values": {"a": list(range(10))}}, max_block_samples=10), Block)
    p = PayloadParser()
    assert p.parse(b'{"ts": 1, "period_s": 1e999, "values": {"a": [1, 2]}}', RX) == "block_bad_period"
    nan = p.parse(b'{"ts": 1, "period_s": 1, "values": {"a": [NaN, Infinity]}}', RX)  # numbers the cleaner refuses
    assert isinstance(nan, Block) and not np.isfinite(nan.values).any()


def test_object_shapes_of_before_are_not_blocks() -> None:
    p = PayloadParser()
    # "values" that is no object of arrays is a channel as before (a non-number: the cleaner counts it)
    for payload, values in [(b'{"values": 3, "b": 1}', {"values": 3.0, "b": 1.0}),
                            (b'{"values": [1, 2]}', {"values": "[1,2]"}),
                            (b'{"values": {"a": 1}}', {"values": '{"a":1}'}),
                            (b'{"values": {}}', {"values": "{}"})]:
        r = p.parse(payload, RX, asset="x")
        assert isinstance(r, Reading) and dict(r.values) == values and r.asset == "x", payload


def test_a_burst_of_readings_coalesces_into_blocks_per_run_of_one_sensor() -> None:
    def r(ts: float, sensor: str = "a", asset: str = "", **values: Any) -> Reading:
        return Reading(float(ts), values or {"x": float(ts), "y": -float(ts)}, sensor, asset)

    blk = Block(np.array([20.0, 21.0]), ("x",), np.array([[1.0], [2.0]]), "a")
    burst = [r(1), r(2), r(3),  # a run of three
             r(4, "b"),  # another sensor: a run of one stays a Reading
             r(5), r(5),  # a timestamp that does not advance ends a run (the cleaner's duplicate_ts)
             r(6, x=1.0, y="ERR"),  # text: the cleaner counts it non_numeric
             r(7, y=1.0, x=2.0),  # the same channels in another order
             r(8, x=1.0, y=2.0), blk, r(9, x=3.0, y=4.0),  # a Block between ends a run
             r(10, asset="other"), r(11, asset="other")]
    out = coalesce(burst, min_run=2)
    kinds = [(type(o).__name__, len(o) if isinstance(o, Block) else 1) for o in out]
    assert kinds == [("Block", 3), ("Reading", 1), ("Reading", 1), ("Reading", 1), ("Reading", 1), ("Reading", 1),
                     ("Reading", 1), ("Block", 2), ("Reading", 1), ("Block", 2)]
    first = out[0]
    assert isinstance(first, Block) and first.channels == ("x", "y") and first.sensor == "a"
    assert first.ts.tolist() == [1.0, 2.0, 3.0] and first.values.tolist() == [[1, -1], [2, -2], [3, -3]]
    assert out[-1].asset == "other" and out[7] is blk  # type: ignore[union-attr]
    # the same readings, in the same order
    rows = [(x.ts, x.sensor, x.asset, dict(x.values)) for o in out for x in (o.rows() if isinstance(o, Block) else [o])]
    want = [(x.ts, x.sensor, x.asset, dict(x.values)) for o in burst for x in (o.rows() if isinstance(o, Block) else [o])]
    assert rows == want
    assert coalesce([]) == [] and coalesce([burst[3]]) == [burst[3]]
    # by default a run shorter than BLOCK_MIN stays readings (cheaper one by one), a longer one is a Block
    assert [type(o) for o in coalesce(burst[:3])] == [Reading] * 3
    run = [r(t) for t in range(1, BLOCK_MIN + 1)]
    one = coalesce(run)
    assert len(one) == 1 and isinstance(one[0], Block) and len(one[0]) == BLOCK_MIN



def _reference_coalesce(records: list[Any], min_run: int) -> list[Any]:
    """The batch algorithm ``Coalescer`` replaced, kept as the oracle: runs found by looking ahead."""
    out: list[Any] = []
    i, n = 0, len(records)
    floats = {float}
    while i < n:
        r, j = records[i], i + 1
        if type(r) is Reading and floats.issuperset(map(type, r.values.values())):
            names, last = tuple(r.values), r.ts
            while j < n:
                x = records[j]
                if (type(x) is not Reading or x.sensor != r.sensor or x.asset != r.asset or not x.ts > last
                        or tuple(x.values) != names or not floats.issuperset(map(type, x.values.values()))):
                    break
                last, j = x.ts, j + 1
        if j - i < max(2, min_run):
            out.extend(records[i:j])
        else:
            run = records[i:j]
            out.append(Block(np.array([x.ts for x in run]), names, np.array([list(x.values.values()) for x in run]),
                             r.sensor, r.asset))
        i = j
    return out


def _records(steps: list[tuple[int, str, str, tuple[str, ...], bool, bool]]) -> list[Any]:
    """A burst from steps (timestamp step, sensor, asset, channel order, a text value, a Block instead): mostly
    readings of one sensor with rising timestamps, so that runs (and runs long enough for a Block) are common."""
    out: list[Any] = []
    ts = 0.0
    for dt, sensor, asset, order, text, block in steps:
        ts += dt
        if block:
            out.append(Block(np.array([ts, ts + 0.5]), ("x",), np.array([[1.0], [2.0]]), sensor, asset))
            continue
        out.append(Reading(ts, {k: ("ERR" if text and k == "y" else ts + ord(k)) for k in order}, sensor, asset))
    return out


_steps = st.lists(st.tuples(
    st.sampled_from([1.0] * 6 + [0.0, -1.0]), st.sampled_from(["a"] * 5 + ["b"]), st.sampled_from([""] * 5 + ["x"]),
    st.sampled_from([("x", "y")] * 6 + [("y", "x"), ("x",)]), st.sampled_from([False] * 15 + [True]),
    st.sampled_from([False] * 20 + [True])), max_size=80)


@settings(max_examples=300, deadline=None)
@given(_steps, st.integers(1, 10), st.lists(st.integers(0, 80), max_size=4))
def test_coalescer_gives_what_the_batch_algorithm_gave(steps: list[Any], min_run: int, cuts: list[int]) -> None:
    """Record by record, with hand-overs (``take``) at any points: each pass is what the look-ahead algorithm
    makes of that pass's records, and ``held`` counts the records added since the last take."""
    records = _records(steps)
    c = Coalescer(min_run)
    bounds = sorted({min(k, len(records)) for k in cuts} | {len(records)})
    start = 0
    for end in bounds:
        for r in records[start:end]:
            c.add(r)
        assert c.held == end - start
        assert c.rows == sum(len(r) if isinstance(r, Block) else 1 for r in records[start:end])
        got, want = c.take(), _reference_coalesce(records[start:end], min_run)
        assert c.held == 0
        assert [type(o) for o in got] == [type(o) for o in want]
        for g, w in zip(got, want):
            if isinstance(w, Block):
                assert (g.channels, g.sensor, g.asset) == (w.channels, w.sensor, w.asset)
                assert g.ts.tolist() == w.ts.tolist() and g.values.tolist() == w.values.tolist()
                assert g.values.shape == w.values.shape and g.values.dtype == np.float64
            else:
                assert g is w
        start = end


def test_a_burst_waiting_for_its_hand_over_is_held_as_columns() -> None:
    """5,000 readings of 8 channels in one pass: what the Coalescer holds is ~72 bytes a reading (two arrays of
    doubles), not the Reading objects with their dicts (560 bytes each here; about a kilobyte from JSON, whose
    keys are new strings in every message)."""
    import tracemalloc

    names = [f"ch{i}" for i in range(8)]
    c = Coalescer()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(5000):
            c.add(Reading(float(i), {n: i + k / 10 for k, n in enumerate(names)}, "pump1"))
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert held < 5000 * 100, f"{held / 5000:.0f} bytes held a reading"
    (block,) = c.take()
    assert isinstance(block, Block) and len(block) == 5000 and block.channels == tuple(names)
    assert block.values[4999].tolist() == [4999 + k / 10 for k in range(8)]

# --- properties: any bytes in -> a Reading or a known reason out, never an exception --------------------------

OUTCOMES = REASONS | BLOCK_REASONS | {HEADER}


def check(result: object) -> None:
    if isinstance(result, Block):
        n = len(result)
        assert n >= 1 and result.ts.shape == (n,) and np.isfinite(result.ts).all() and (np.diff(result.ts) > 0).all()
        assert result.values.shape == (n, len(result.channels)) and result.values.dtype == np.float64
    elif isinstance(result, Reading):
        assert isinstance(result.ts, float) and math.isfinite(result.ts)
        assert result.values and all(isinstance(k, str) for k in result.values)
        assert all(isinstance(v, (float, str)) for v in result.values.values())
    else:
        assert result in OUTCOMES, result


printable_lines = st.lists(
    st.sampled_from([b"1", b"-2.5", b"nan", b"x", b"ts", b"a", b"b", b"=", b",", b";", b" ", b'"', b"{", b"}",
                     b":", b"*", b"$", b"2024-01-01T00:00:00Z", b"1700000000", b"\xff", b"\x00", b"\r"]),
    max_size=20,
).map(b"".join)
any_line = st.one_of(st.binary(max_size=300), printable_lines)


@settings(max_examples=300, deadline=None)
@given(fmt=st.sampled_from(["csv", "json", "kv"]), checksum=st.booleans(),
       channels=st.sampled_from([(), ("a",), ("ts", "a", "b")]), lines=st.lists(any_line, max_size=8))
def test_line_parser_never_raises(fmt: str, checksum: bool, channels: tuple[str, ...], lines: list[bytes]) -> None:
    p = LineParser(fmt, channels=channels, checksum=checksum, sensor="s")  # type: ignore[arg-type]
    for line in lines:  # a sequence, so csv header state is exercised too
        check(p.parse(line, RX))
        if checksum:
            check(p.parse(with_checksum(line), RX))


@settings(max_examples=300, deadline=None)
@given(obj=st.dictionaries(st.text(max_size=5), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=5), max_size=5))
def test_json_objects_never_raise(obj: dict[str, Any]) -> None:
    line = json.dumps(obj).encode()
    check(LineParser("json").parse(line, RX))
    check(PayloadParser().parse(line, RX))


@settings(max_examples=300, deadline=None)
@given(payload=any_line)
def test_payload_parser_never_raises(payload: bytes) -> None:
    check(PayloadParser(channel="v").parse(payload, RX, sensor="x"))


@settings(max_examples=300, deadline=None)
@given(ts=st.none() | st.floats() | st.text(max_size=5),
       period=st.none() | st.floats() | st.integers() | st.text(max_size=3),
       values=st.dictionaries(st.text(max_size=3), st.lists(
           st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3), max_size=6), max_size=4))
def test_block_payloads_never_raise(ts: Any, period: Any, values: dict[str, Any]) -> None:
    obj: dict[str, Any] = {"period_s": period, "values": values}
    if ts is not None:
        obj["ts"] = ts
    check(PayloadParser(max_block_samples=4).parse(json.dumps(obj).encode(), RX))


@given(data=st.binary(max_size=200))
def test_xor_checksum_matches_naive(data: bytes) -> None:
    assert xor_checksum(data) == functools.reduce(operator.xor, data, 0)


# -- JSON by orjson, with json's meaning (agent.parse.loads_json) ---------------------------------------------------

@pytest.mark.parametrize("text", [
    '{"a": NaN, "b": 1.5}', '{"a": Infinity}', '-Infinity', '1e400', '-1e400', '1.7976931348623159e308',
    '"\\ud800"', '{"k\\udc00": 1.0}', "[" * 1100 + "]" * 1100,  # what orjson refuses: json's answer stands
    '{"a": 1, "a": 2.5}', '{"x": 5e-324, "y": -0.0, "z": 2.2250738585072014e-308}', '1.0e-400', ' {"a": 1} ',
    '{"a": true, "b": null, "c": "7.5", "d": [1, 2]}', '9223372036854775807', '-9223372036854775808', '"\\u00e9"',
])
def test_loads_json_means_what_json_loads_means(text: str) -> None:
    from agent.parse import loads_json

    try:
        want: Any = json.loads(text)
    except RecursionError:
        with pytest.raises(RecursionError):
            loads_json(text)
        return
    got = loads_json(text)
    assert repr(got) == repr(want)  # repr: NaN, -0.0 and types compare as they print


@pytest.mark.parametrize("text", ['{"a": 1,}', "NaN]", "01", "1.", '"\\x"', "{", "", "é"])
def test_loads_json_refuses_what_json_refuses(text: str) -> None:
    from agent.parse import loads_json

    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        loads_json(text)


def test_loads_json_integers_past_64_bits_are_the_float_a_reading_holds() -> None:
    """orjson gives a float for an integer past 64 bits where json gives an int: the value every stage reads is
    ``float(int)`` either way (a channel value, a timestamp, a block sample)."""
    from agent.parse import loads_json

    for text in (str(2**64), str(2**64 + 1), str(-2**70 - 12345), "1" + "0" * 30, "123456789012345678901234567890"):
        assert float(loads_json(text)) == float(json.loads(text))
    p = PayloadParser()
    big = p.parse(b'{"a": 18446744073709551617, "b": 1.5}', 100.0)
    assert isinstance(big, Reading) and big.values == {"a": float(2**64 + 1), "b": 1.5}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=12),
       st.sampled_from(["{!r}", "{:.17g}", "{:.6g}", "{:.3f}", "{:.12e}"]))
def test_loads_json_floats_are_jsons_bit_for_bit(xs: list[float], fmt: str) -> None:
    from agent.parse import loads_json

    text = "{" + ", ".join(f'"c{i}": {fmt.format(x)}' for i, x in enumerate(xs)) + "}"
    got, want = loads_json(text), json.loads(text)
    assert [np.float64(v).tobytes() for v in got.values()] == [np.float64(v).tobytes() for v in want.values()]
    assert [type(v) for v in got.values()] == [type(v) for v in want.values()]


def test_loads_json_reads_nesting_up_to_1024_levels_whatever_the_stack() -> None:
    """json refused ~990+ levels with RecursionError, how many depending on the thread's stack; orjson reads up to
    1,024 on any thread; deeper is json's RecursionError (the callers' "malformed") as before."""
    from agent.parse import loads_json

    assert loads_json("[" * 1000 + "]" * 1000) is not None
    with pytest.raises(RecursionError):
        loads_json("[" * 5000 + "]" * 5000)
    deep = "[" * 5000 + "]" * 5000
    assert PayloadParser().parse(('{"a": 1.5, "n": ' + deep + '}').encode(), 100.0) == "malformed"


def test_json_payloads_and_lines_read_nan_and_big_numbers_as_before() -> None:
    """NaN in an object is a reading whose channel the cleaner counts (not a malformed message), as with json."""
    r = PayloadParser().parse(b'{"a": NaN, "b": 1e400}', 100.0)
    assert isinstance(r, Reading) and math.isnan(r.values["a"]) and r.values["b"] == math.inf
    line = LineParser(format="json").parse(b'{"a": NaN, "b": 2.5}', 100.0)
    assert isinstance(line, Reading) and math.isnan(line.values["a"]) and line.values["b"] == 2.5


def test_a_block_whose_samples_a_timestamp_cannot_tell_apart_is_refused() -> None:
    # Found by test_block_payloads_never_raise: at 1.7e9 s a timestamp resolves 2.4e-7 s; a period of 1.5e-7 s
    # passed the check of the first step (t0 + p rounds up) while the third sample got the second's timestamp.
    t0 = 1_700_000_000.0
    p = 1.5e-7
    assert t0 + p > t0 and t0 + 2 * p == t0 + p
    got = PayloadParser(max_block_samples=4).parse(json.dumps({"ts": t0, "period_s": p, "values": {"x": [1, 2, 3]}})
                                                  .encode(), RX)
    assert got == "block_bad_period", got
