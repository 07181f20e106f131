"""SerialSource on real pty pairs: formats, rejects by reason, unplug/replug behind a symlink, close, EACCES."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.counters import Counters
from agent.parse import with_checksum
from agent.records import BLOCK_MIN, Block, Reading
from agent.settings import SerialSourceSettings
from agent.sources import CONNECTED, CONNECTING, DISCONNECTED, FINISHED
from agent.sources.serial import LineSplitter, SerialSource, permission_message
from tests.conftest import Pty, visits


@pytest.fixture
def pty_factory() -> Iterator[Callable[[], Pty]]:
    made: list[Pty] = []

    def make() -> Pty:
        made.append(Pty())
        return made[-1]

    yield make
    for p in made:
        p.unplug()


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 5.0, runner: Any = None) -> None:
    """Poll ``cond`` until true; fail with ``what`` on timeout or as soon as the source thread died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if runner is not None:
            runner.check_alive()
        time.sleep(0.01)
    assert cond(), f"timed out after {timeout} s waiting for {what}"


class Runner:
    """A SerialSource running on its own thread, with its readings and any exception that killed it."""

    def __init__(self, source: SerialSource) -> None:
        self.source = source
        self.readings: list[Reading] = []
        self.handed: list[tuple[float, int]] = []  # (monotonic time, readings) of each hand-over to the sink
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.states: list[str] = []
        self.thread = threading.Thread(target=self._run, name="serial-source", daemon=True)

    def _sink(self, rec: Reading | Block) -> None:
        rows = rec.rows() if isinstance(rec, Block) else [rec]
        self.handed.append((time.monotonic(), len(rows)))
        self.readings.extend(rows)

    def _run(self) -> None:
        try:
            self.source.run(self._sink, self.stop)
        except BaseException as e:  # recorded so the test fails instead of hanging
            self.error = e

    def check_alive(self) -> None:
        if self.error is not None:
            raise AssertionError(f"source thread died: {self.error!r}") from self.error
        assert self.thread.is_alive(), "source thread returned early"

    def state_is(self, state: str) -> bool:
        s = self.source.state
        if not self.states or self.states[-1] != s:
            self.states.append(s)
        return s == state

    def values(self) -> list[dict[str, Any]]:
        return [dict(r.values) for r in self.readings]


@contextmanager
def running(settings: SerialSourceSettings, counters: Counters | None = None) -> Iterator[Runner]:
    runner = Runner(SerialSource(settings, counters or Counters()))
    runner.thread.start()
    try:
        yield runner
    finally:
        runner.source.close()
        runner.thread.join(5)
    assert not runner.thread.is_alive(), "run() did not return within 5 s of close()"
    assert runner.error is None, f"source thread died: {runner.error!r}"
    assert runner.source.state == FINISHED


def serial_settings(port: str, **kw: Any) -> SerialSourceSettings:
    kw.setdefault("reconnect_min_s", 0.05)
    kw.setdefault("reconnect_max_s", 0.2)
    kw.setdefault("sensor", "pump-1")
    return SerialSourceSettings.model_validate({"port": port, **kw})


def connected(runner: Runner) -> None:
    wait_for(lambda: runner.state_is(CONNECTED), "CONNECTED", runner=runner)


# b"\n" first: the first fragment after an open is dropped as a possible partial line; an empty one is not.
FORMATS: dict[str, tuple[dict[str, Any], bytes]] = {
    "csv": ({"format": "csv", "channels": ["ts", "a", "b"]},
            b"\n1700000000,1.5,2\n1700000001,3,ERR\n"),
    "json": ({"format": "json"},
             b'\n{"ts": 1700000000, "a": 1.5, "b": 2}\n{"ts": "2023-11-14T22:13:21Z", "a": 3, "b": "ERR"}\n'),
    "kv": ({"format": "kv", "terminator": "crlf"},
           b"\r\nts=1700000000 a=1.5,b=2\r\nts=1700000001;a=3;b=ERR\r\n"),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_formats_flow(pty_factory: Callable[[], Pty], fmt: str) -> None:
    kw, data = FORMATS[fmt]
    pty = pty_factory()
    counters = Counters()
    with running(serial_settings(pty.path, **kw), counters) as r:
        connected(r)
        pty.write(data)
        wait_for(lambda: len(r.readings) == 2, "two readings", runner=r)
    assert r.values() == [{"a": 1.5, "b": 2.0}, {"a": 3.0, "b": "ERR"}]
    assert [x.ts for x in r.readings] == [1_700_000_000.0, 1_700_000_001.0]
    assert {x.sensor for x in r.readings} == {"pump-1"}
    assert counters.get("source.lines") == 2
    assert counters.snapshot("reject.") == {}


def _write_paced(pty: Pty, lines: list[bytes], rate: float) -> list[float]:
    """Write one line every 1/rate s; the monotonic time each was written."""
    times, t0 = [], time.monotonic()
    for i, line in enumerate(lines):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        pty.write(line)
        times.append(time.monotonic())
    return times


def test_a_busy_stream_is_read_a_few_lines_at_a_time_a_slow_one_at_once(pty_factory: Callable[[], Pty]) -> None:
    """Pacing (agent.sources.Pacer): lines 10 ms apart reach the sink several at a time (one wake-up for several
    readings), none later than about GATHER_MS; lines 200 ms apart each at once; GATHER_MS=0 turns it off. A read
    of BLOCK_MIN lines or more is one Block."""
    pty = pty_factory()
    lines = [f"{1_700_000_000 + i},{i}.5\n".encode() for i in range(150)]
    for gather_ms, rate, n in ((40, 100.0, 150), (0, 100.0, 150), (40, 5.0, 8)):
        with running(serial_settings(pty.path, channels=["ts", "a"], gather_ms=gather_ms)) as r:
            connected(r)
            pty.write(b"\n")
            written = _write_paced(pty, lines[:n], rate)
            wait_for(lambda: len(r.readings) == n, f"{n} readings", runner=r)
        per_visit = n / len(visits(r.handed))
        assert [x.values["a"] for x in r.readings] == [i + 0.5 for i in range(n)]
        arrived = [t for t, k in r.handed for _ in range(k)]
        waited = sorted(a - w for a, w in zip(arrived, written))
        median_wait = waited[len(waited) // 2]
        if gather_ms and rate > 20:
            assert per_visit >= 2.5, (gather_ms, rate, visits(r.handed))  # ~4 at 40 ms
            assert waited[-1] < gather_ms / 1000 + 0.25, waited[-5:]  # a reading waits about GATHER_MS at most
        else:
            assert per_visit < 1.6, (gather_ms, rate, visits(r.handed))  # (a line split over two reads is one visit)
            assert median_wait < 0.02, waited  # not held back
    with running(serial_settings(pty.path, channels=["ts", "a"])) as r:
        connected(r)
        pty.write(b"\n" + b"".join(lines[:3 * BLOCK_MIN]))
        wait_for(lambda: len(r.readings) == 3 * BLOCK_MIN, "the burst", runner=r)
    assert max(n for _, n in r.handed) >= BLOCK_MIN  # handed over as a Block


def test_csv_header_required_when_no_channels(pty_factory: Callable[[], Pty]) -> None:
    pty = pty_factory()
    counters = Counters()
    with running(serial_settings(pty.path, format="csv", delimiter=";"), counters) as r:
        connected(r)
        pty.write(b"\n1;2\n3;4\ndatetime;Current;Pressure\n2024-01-01 00:00:00;5;6\n")
        wait_for(lambda: len(r.readings) == 1, "reading after header", runner=r)
        pty.write(b"2024-01-01 00:00:01;7;8\n")
        wait_for(lambda: len(r.readings) == 2, "second reading", runner=r)
    assert counters.get("reject.no_header") == 2
    assert counters.get("source.headers") == 1
    assert r.values() == [{"datetime": "2024-01-01 00:00:00", "Current": 5.0, "Pressure": 6.0},
                          {"datetime": "2024-01-01 00:00:01", "Current": 7.0, "Pressure": 8.0}]


def test_bad_lines_counted_by_reason_good_lines_still_arrive(pty_factory: Callable[[], Pty]) -> None:
    pty = pty_factory()
    counters = Counters()
    settings = serial_settings(pty.path, format="kv", checksum=True, max_line_bytes=64)
    good = [with_checksum(b"seq=%d temp=20.5" % i) for i in range(6)]
    stream = [
        b"",  # sync: the stream starts at a line boundary
        good[0],
        b"seq=99 temp=1*00",  # wrong checksum
        b"seq=98 temp=1",  # missing checksum
        good[1],
        b"\x00\xff\x81\xfe\x12garbage\x80" * 3,  # binary: fails the checksum first
        good[2],
        b"seq=97 temp=" + b"9" * 200,  # over-long, in one write
        good[3],
        with_checksum(b"seq=96 temp=\xff\xfe"),  # right checksum, not UTF-8
        with_checksum(b"seq=95 \x01temp=1"),  # right checksum, control character
        good[4],
    ]
    with running(settings, counters) as r:
        connected(r)
        pty.write(b"\n".join(stream) + b"\n")
        # an over-long line trickling in small writes: dropped once, no stall, no unbounded buffer
        for _ in range(20):
            pty.write(b"x" * 50)
        pty.write(b"\n" + good[5] + b"\n")
        wait_for(lambda: len(r.readings) == 6, "six good readings", runner=r)
        wait_for(lambda: counters.get("reject.line_too_long") == 2, "line_too_long counted", runner=r)
    assert [v["seq"] for v in r.values()] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert counters.snapshot("reject.") == {"checksum": 3, "line_too_long": 2, "not_utf8": 1, "malformed": 1}
    assert len(r.source._splitter._buf) <= 64  # bounded


def test_partial_first_line_dropped_and_counted(pty_factory: Callable[[], Pty]) -> None:
    """A device streaming while the port opens: its first bytes come at once, may be a line's tail: dropped."""
    pty = pty_factory()
    counters = Counters()
    stop = threading.Event()

    def stream() -> None:  # consecutive numbers, back to back: a tail of "100123" would read as "0123" or "23"
        i = 100_000
        while not stop.is_set():
            pty.write(b"%d\n" % i)
            i += 1
            time.sleep(0.001)

    writer = threading.Thread(target=stream, daemon=True)
    writer.start()
    try:
        with running(serial_settings(pty.path, format="csv", channels=["a"]), counters) as r:
            wait_for(lambda: len(r.readings) >= 20, "twenty readings", runner=r)
    finally:
        stop.set()
        writer.join(5)
    values = [v["a"] for v in r.values()]
    assert counters.get("reject.partial_line") == 1
    assert values[0] >= 100_000 and values == [values[0] + i for i in range(len(values))], values[:5]


def test_a_line_of_max_line_bytes_is_kept_when_a_read_ends_between_its_cr_and_lf(pty_factory: Callable[[], Pty]) -> None:
    """The CR of a CRLF read without its LF is not the line's: a line of exactly max_line_bytes is no line_too_long."""
    pty = pty_factory()
    counters = Counters()
    line = b"1.0,2.0,34.56789"
    settings = serial_settings(pty.path, format="csv", channels=["a", "b", "c"], terminator="crlf",
                               max_line_bytes=len(line))
    with running(settings, counters) as r:
        connected(r)
        first = b"\r\n" + line + b"\r"  # an empty first fragment is no line (nor a dropped partial one)
        pty.write(first)
        wait_for(lambda: counters.get("source.bytes") == len(first), "the read ending in the CR", runner=r)
        pty.write(b"\n5,6,7\r\n")
        wait_for(lambda: {"a": 5.0, "b": 6.0, "c": 7.0} in r.values(), "the line after it", runner=r)
    assert r.values() == [{"a": 1.0, "b": 2.0, "c": 34.56789}, {"a": 5.0, "b": 6.0, "c": 7.0}]
    assert counters.snapshot("reject.") == {}


def test_a_whole_first_line_after_a_quiet_open_is_kept(pty_factory: Callable[[], Pty]) -> None:
    """Issue 12 item 11: the first line after opening the port was always dropped, also when it was whole. pyserial
    flushes the input queue at open; a device that starts a line after a pause sends a whole one."""
    pty = pty_factory()
    counters = Counters()
    with running(serial_settings(pty.path, format="csv", channels=["a"]), counters) as r:
        connected(r)
        time.sleep(0.5)  # the device's pause between lines
        pty.write(b"7\n8\n")
        wait_for(lambda: len(r.readings) == 2, "both readings", runner=r)
    assert r.values() == [{"a": 7.0}, {"a": 8.0}]
    assert counters.snapshot("reject.") == {}


def test_a_device_without_the_configured_terminator_is_reported(pty_factory: Callable[[], Pty],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Issue 12 item 11: lines ending with CR only, LF configured: zero readings and status online. Now the source
    says why (the status shows it as a degraded reason) and names the terminator the data has."""
    caplog.set_level(logging.WARNING, logger="agent.sources.serial")
    pty = pty_factory()
    counters = Counters()
    with running(serial_settings(pty.path, format="csv", channels=["a"], max_line_bytes=64), counters) as r:
        connected(r)
        src = r.source
        assert src.problems == []
        for i in range(400):  # 2,000 bytes, no LF
            pty.write(b"%d\r" % (1000 + i))
        wait_for(lambda: src.problems, "the problem reported", runner=r)
        assert src.problems == ["no line terminator in 1024 bytes (the data has CR: EDGE_AGENT_SOURCE__TERMINATOR=cr?)"]
        assert r.readings == [] and caplog.text.count("no line terminator") == 1
        pty.write(b"\n5\n")  # the device fixed: lines again, the problem is gone
        wait_for(lambda: src.problems == [] and r.readings, "lines again", runner=r)


def test_unplug_and_replug_behind_symlink(pty_factory: Callable[[], Pty], tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.sources.serial")
    link = tmp_path / "usb-FTDI_FT232R_A1B2C3-if00-port0"
    a = pty_factory()
    link.symlink_to(a.path)
    counters = Counters()
    with running(serial_settings(str(link), format="csv", channels=["a"]), counters) as r:
        connected(r)
        a.write(b"\n1\n2\n")
        wait_for(lambda: len(r.readings) == 2, "readings from pty A", runner=r)
        a.write(b"3")  # a partial line in flight when the cable is pulled
        time.sleep(0.05)
        a.unplug()
        link.unlink()  # udev removes the by-id link with the node (and a freed /dev/pts/N may be reused at once)
        wait_for(lambda: r.state_is(DISCONNECTED), "DISCONNECTED after unplug", runner=r)
        time.sleep(0.3)  # a few failed reopen attempts against the dead path
        assert r.source.state == DISCONNECTED
        b = pty_factory()
        tmp = tmp_path / "link.tmp"
        tmp.symlink_to(b.path)
        os.replace(tmp, link)  # atomic, as udev (re)creates /dev/serial/by-id/... for the new node
        connected(r)
        b.write(b"\n4\n5\n")
        wait_for(lambda: len(r.readings) == 4, "readings from pty B", timeout=10, runner=r)
    assert r.values() == [{"a": 1.0}, {"a": 2.0}, {"a": 4.0}, {"a": 5.0}]  # the dangling "3" was discarded
    assert counters.get("source.reconnects") == 1
    assert [x for x in r.states if x != CONNECTING][:3] == [CONNECTED, DISCONNECTED, CONNECTED]
    disconnects = [m for m in caplog.messages if "disconnected" in m]
    assert len(disconnects) == 1, caplog.messages  # one warning per outage, not one per retry
    assert any("connected again" in m for m in caplog.messages)


def test_close_unblocks_idle_run(pty_factory: Callable[[], Pty]) -> None:
    pty = pty_factory()
    runner = Runner(SerialSource(serial_settings(pty.path), Counters()))
    runner.thread.start()
    connected(runner)
    t0 = time.monotonic()
    runner.source.close()
    runner.thread.join(2)
    assert not runner.thread.is_alive(), "close() did not unblock run() within 2 s"
    assert runner.error is None and runner.source.state == FINISHED
    assert time.monotonic() - t0 < 2


@pytest.mark.parametrize("how", ["close", "stop"])
def test_backoff_sleep_is_interruptible(tmp_path: Path, how: str) -> None:
    missing = tmp_path / "no-such-port"
    runner = Runner(SerialSource(serial_settings(str(missing), reconnect_min_s=60, reconnect_max_s=60), Counters()))
    runner.thread.start()
    wait_for(lambda: runner.state_is(DISCONNECTED), "DISCONNECTED", runner=runner)
    time.sleep(0.1)  # now inside the 60 s backoff
    runner.source.close() if how == "close" else runner.stop.set()
    runner.thread.join(2)
    assert not runner.thread.is_alive(), f"{how} did not end the backoff sleep within 2 s"
    assert runner.error is None and runner.source.state == FINISHED


def test_unknown_url_scheme_fails_at_construction() -> None:
    with pytest.raises(ValueError):
        SerialSource(serial_settings("nosuch://x"), Counters())


def test_permission_message_names_dialout() -> None:
    msg = permission_message("/dev/ttyUSB0")
    assert msg.startswith("permission denied on /dev/ttyUSB0")
    assert "'dialout' group" in msg


def _eacces_child(port: str, out_fd: int) -> None:
    """In a forked child: open ``port`` as a source for 0.6 s (many EACCES retries), report what was logged."""
    records: list[tuple[str, str]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append((record.levelname, record.getMessage()))

    logger = logging.getLogger("agent.sources.serial")
    logger.addHandler(Collect())
    logger.setLevel(logging.DEBUG)
    src = SerialSource(serial_settings(port, reconnect_min_s=0.02, reconnect_max_s=0.05), Counters())
    stop = threading.Event()
    t = threading.Thread(target=src.run, args=(lambda r: None, stop))
    t.start()
    time.sleep(0.6)
    state = src.state
    src.close()
    t.join(5)
    os.write(out_fd, json.dumps({"state": state, "alive": t.is_alive(), "records": records}).encode())


def test_permission_denied_logged_once_per_outage(pty_factory: Callable[[], Pty]) -> None:
    """EACCES for real: as root (CI) a forked child drops to uid/gid 65534 (nobody), for whom the pty slave
    (root:tty 0620) is closed; as another user the pty is chmod 000 (which does deny its non-root owner)."""
    pty = pty_factory()
    if os.geteuid() != 0:
        os.chmod(pty.path, 0)
    r_fd, w_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(r_fd)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            _eacces_child(pty.path, w_fd)
            code = 0
        finally:
            os._exit(code)
    os.close(w_fd)
    chunks = []
    deadline = time.monotonic() + 30
    with os.fdopen(r_fd, "rb") as f:
        while time.monotonic() < deadline:
            chunk = f.read()
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    result = json.loads(b"".join(chunks))
    assert result["state"] == DISCONNECTED and not result["alive"]
    errors = [m for level, m in result["records"] if level == "ERROR"]
    assert errors == [permission_message(pty.path)], result["records"]
    assert [m for _, m in result["records"] if "dialout" in m] == errors  # once, though it retried many times


def test_splitter_bounds_and_reasons() -> None:
    """LineSplitter alone: terminators split across chunks, over-long lines, the first fragment."""
    rejected: list[str] = []
    s = LineSplitter(b"\r\n", 8, rejected.append)
    s.reset(drop_first=True)
    assert s.feed(b"tail\r") == [] and s.feed(b"\nab\r") == [] and s.feed(b"\ncd\r\n") == [b"ab", b"cd"]
    assert rejected == ["partial_line"]
    assert s.feed(b"0123456789\r\nok\r\n") == [b"ok"]
    assert s.feed(b"0123456789abc") == [] and s.feed(b"def\r") == [] and s.feed(b"\nok2\r\n") == [b"ok2"]
    assert rejected == ["partial_line", "line_too_long", "line_too_long"]
    assert len(s._buf) <= 8
    s.reset(drop_first=False)
    assert s.feed(b"x\r\n") == [b"x"]
