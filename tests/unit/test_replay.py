"""The replay reader: SKAB format, timestamps from the file, bad rows counted, never an exception."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.counters import Counters
from agent.sources.replay import read_recording

HEADER = b"datetime;a;b;anomaly\n"


def _write(tmp: Path, body: bytes, header: bytes = HEADER) -> Path:
    p = tmp / "rec.csv"
    p.write_bytes(header + body)
    return p


def test_skab_rows_with_timestamps_from_the_file(tmp_path):
    p = _write(tmp_path, b"2020-03-09 10:34:33;1.5;x;0\n2020-03-09 10:34:34;2;3;1\n")
    c = Counters()
    rows = list(read_recording(p, c))
    assert [r.ts for r in rows] == [1583750073.0, 1583750074.0]
    assert rows[0].values == {"a": 1.5, "b": "x", "anomaly": 0.0}
    assert c.get("source.bytes") > 0


@pytest.mark.parametrize(
    "body, reason",
    [(b"2020-03-09 10:34:33;1;2\n", "field_count"), (b"yesterday;1;2;0\n", "bad_timestamp")],
)
def test_bad_rows_are_counted_and_skipped(tmp_path, body, reason):
    p = _write(tmp_path, body + b"2020-03-09 10:34:35;1;2;0\n")
    c = Counters()
    assert len(list(read_recording(p, c))) == 1
    assert c.snapshot("reject.") == {reason: 1}


def test_comma_separated_with_epoch_timestamps(tmp_path):
    p = _write(tmp_path, b"1700000000,1,2\n", header=b"ts,a,b\n")
    assert [r.ts for r in read_recording(p, Counters())] == [1700000000.0]


def test_a_file_without_time_column_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no time column"):
        list(read_recording(_write(tmp_path, b"1;2\n", header=b"a;b\n"), Counters()))


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(body=st.binary(max_size=2000))
def test_any_bytes_give_readings_or_counted_rejections(tmp_path, body):
    c = Counters()
    rows = list(read_recording(_write(tmp_path, body), c))
    lines = [ln for ln in body.replace(b"\r", b"\n").split(b"\n") if ln]
    assert len(rows) <= max(1, len(lines)) * 2  # quoted fields may join lines, never invent rows
    assert all(isinstance(r.ts, float) for r in rows)
