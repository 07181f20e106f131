"""The replay reader: SKAB format, timestamps from the file, bad rows counted, never an exception."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.counters import Counters
from agent.sources.replay import read_recording, recording_channels

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


def test_a_column_named_twice_is_refused_not_silently_replaced(tmp_path):
    # both "a" columns used to carry the second column's values: the first one's data was lost without a word
    p = _write(tmp_path, b"1700000000,1,2\n", header=b"ts,a,a\n")
    with pytest.raises(ValueError, match="'a' appears twice in the header \\(columns 2 and 3\\)"):
        list(read_recording(p, Counters()))
    with pytest.raises(ValueError, match="appears twice"):
        recording_channels(p)


def test_a_trailing_separator_is_not_a_channel(tmp_path):
    # spreadsheets end every line with a separator: the unnamed empty column used to be a channel that was never
    # numeric, went stale, and every reading of the recording was dropped
    p = _write(tmp_path, b"1700000000,1,2,\n1700000001,3,4,\n", header=b"ts,a,b,\n")
    assert recording_channels(p) == ["a", "b"]
    assert [r.values for r in read_recording(p, Counters())] == [{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 4.0}]


@pytest.mark.parametrize("header", [b"a,b\n", b"ts,a,a\n", b""])
def test_the_daemon_refuses_a_recording_it_cannot_play_at_start(tmp_path, header):
    # a recording without a time column (or an empty file) used to kill the source thread with a traceback, exit 1
    p = _write(tmp_path, b"1700000000,1,2\n" if header else b"", header=header)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update(EDGE_AGENT_SOURCE__KIND="replay", EDGE_AGENT_SOURCE__PATH=str(p), EDGE_AGENT_STATE_DIR=str(tmp_path / "st"),
               EDGE_AGENT_MQTT__PORT="1", EDGE_AGENT_DRAIN_TIMEOUT_S="0.1")
    r = subprocess.run([sys.executable, "-m", "agent", "run"], capture_output=True, text=True, env=env, timeout=60,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 78, r.stderr
    assert f"config error: EDGE_AGENT_SOURCE__PATH={p}:" in r.stderr and "Traceback" not in r.stderr
