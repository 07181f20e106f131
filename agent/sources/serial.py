"""Serial source: reads lines from a pyserial port in bulk, parses them, reconnects after an unplug.

Runs on the source thread (``run``); ``close`` is called from another thread. pyserial's ``readline()`` makes
one system call per byte (~3.9k lines/s on a pty), so we read ``max(1, in_waiting)`` bytes with a short timeout
and split lines ourselves in ``LineSplitter``, with a bounded buffer.

pyserial contract relied on (3.5, posix): a vanished device raises ``SerialException`` from ``read`` (EIO, or
"device reports readiness to read but returned no data"); ``open`` raises ``SerialException`` with ``errno`` set
and flushes the input queue (``tcflush(TCIFLUSH)``); ``cancel_read`` makes a blocked ``read`` return early.

The first line after an open: the input queue is empty then (pyserial flushed it), so what arrives first is either
the rest of a line the device was sending (or of the adapter's FIFO) — bytes that come at once — or the start of a
new line, after the device's pause between lines. A first byte that arrives after ``QUIET_S`` of silence starts a
whole line and is kept; one that comes sooner may be a tail and its fragment is dropped (``reject.partial_line``).

A device that never sends the configured terminator would give zero readings: after ``no_terminator_bytes``
without one, ``problems`` says so (the status shows it as a degraded reason), naming the terminator the data seems
to use, until a line arrives.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from typing import Any, Callable

import serial

from agent.counters import Counters
from agent.parse import HEADER, LineParser
from agent.receipt import receipt_time
from agent.payload import coalesce
from agent.records import Reading
from agent.settings import SerialSourceSettings
from agent.sources import CONNECTED, CONNECTING, DISCONNECTED, FINISHED, Pacer, Sink

log = logging.getLogger(__name__)

TERMINATORS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}
READ_TIMEOUT_S = 0.2  # bounds how long run() takes to notice stop/close when cancel_read is unavailable
MAX_READ = 1 << 16  # one read never takes more than this, whatever in_waiting says
QUIET_S = 0.1  # silence after the open that makes the first byte the start of a line (a USB adapter delivers
# what it holds within its 16 ms latency timer; devices pause far longer than this between lines)


def permission_message(port: str) -> str:
    """The log line for EACCES on ``port``: names the group that grants access to serial devices."""
    return (
        f"permission denied on {port}: add the service user to the 'dialout' group "
        f"(usermod -aG dialout <user>) or fix the device's udev rule; retrying"
    )


class LineSplitter:
    """Splits a byte stream into lines with a bounded buffer; drops over-long lines and the first fragment."""

    def __init__(self, terminator: bytes, max_line_bytes: int, reject: Callable[[str], None]) -> None:
        self.terminator = terminator
        self.max_line_bytes = max_line_bytes
        self._reject = reject
        self._buf = b""
        self._discard: str | None = None  # reason to count for the fragment dropped up to the next terminator
        self._counted = False  # the fragment being discarded was already counted
        self._first = False  # nothing of the new stream seen yet: an empty first fragment is no line
        self.unterminated = 0  # bytes since the last terminator (a device sending another terminator)

    def reset(self, drop_first: bool = True) -> None:
        """Forget buffered bytes (after a disconnect); drop the first fragment of the new stream if asked (an
        empty one is never a line: it ends one sent before the port was opened)."""
        self._buf = b""
        self._discard = "partial_line" if drop_first else None
        self._counted = False
        self._first = True
        self.unterminated = 0

    def feed(self, data: bytes) -> list[bytes]:
        """The complete lines (terminator removed) that ``data`` finishes, in order."""
        term = self.terminator
        buf = self._buf + data if self._buf else data
        parts = buf.split(term)
        rest = parts.pop()
        self.unterminated = len(rest) if parts else self.unterminated + len(data)
        if self._first and (parts or rest):
            self._first = False
            if parts and not parts[0] and self._discard is None:
                parts.pop(0)
        if self._discard is not None:
            if not parts:  # still inside the fragment: keep only what could start a split terminator
                self._buf = rest[len(rest) - len(term) + 1:] if len(term) > 1 else b""
                if len(rest) > len(self._buf) and not self._counted:
                    self._counted = True  # bytes of the fragment were dropped: count it now, once
                    self._reject(self._discard)
                return []
            first = parts.pop(0)
            if first and not self._counted:
                self._reject(self._discard)
            self._discard = None
            self._counted = False
        limit = self.max_line_bytes
        if parts and max(map(len, parts)) > limit:  # rare: whole over-long lines inside one chunk
            kept = []
            for p in parts:
                if len(p) > limit:
                    self._reject("line_too_long")
                else:
                    kept.append(p)
            parts = kept
        if len(rest) > limit and len(rest) - _split_terminator(rest, term) > limit:
            self._reject("line_too_long")
            self._discard, self._counted = "line_too_long", True
            self._buf = rest[len(rest) - len(term) + 1:] if len(term) > 1 else b""
        else:
            self._buf = rest
        return parts


def _split_terminator(rest: bytes, term: bytes) -> int:
    """How many bytes at the end of ``rest`` may be the start of a terminator the next read completes (the CR of a
    CRLF): not the line's, so not counted against ``max_line_bytes``."""
    return next((k for k in range(len(term) - 1, 0, -1) if rest.endswith(term[:k])), 0)


class SerialSource:
    """Reads a serial port (device path or pyserial URL) line by line and hands each Reading to the sink."""

    live = True

    def __init__(self, settings: SerialSourceSettings, counters: Counters) -> None:
        self.settings = settings
        self.counters = counters
        self.name = f"serial:{settings.port}"
        self.parser = LineParser.from_settings(settings)
        self._splitter = LineSplitter(TERMINATORS[settings.terminator], settings.max_line_bytes, self._reject)
        self._state = CONNECTING
        self._closed = threading.Event()
        self._ser: Any = None
        self._kwargs: dict[str, Any] = dict(
            baudrate=settings.baudrate, parity=settings.parity, stopbits=settings.stopbits,
            bytesize=settings.bytesize, timeout=READ_TIMEOUT_S,
        )
        if "://" not in settings.port:
            self._kwargs["exclusive"] = True  # flock: a second agent on the same port fails instead of halving lines
        # Fail now, not on the source thread, on an unknown URL scheme or a parameter pyserial refuses.
        serial.serial_for_url(settings.port, do_not_open=True, **self._kwargs)
        self._pending: dict[str, int] = {}
        self.no_terminator_bytes = max(2 * settings.max_line_bytes, 1024)
        self.problems: list[str] = []  # degraded reasons for the status; replaced whole, never changed in place

    @property
    def channels(self) -> list[str] | None:
        """The configured channels, or those of the header line the device sent; None until one is known."""
        cols = self.parser.columns
        if self.settings.format != "csv" or cols is None:
            return None
        return [c for c in cols if c != self.settings.timestamp_field]

    @property
    def state(self) -> str:
        """connecting | connected | disconnected | finished."""
        return self._state

    def close(self) -> None:
        """Make ``run`` return promptly; safe from any thread, any number of times."""
        self._closed.set()
        ser = self._ser
        cancel = getattr(ser, "cancel_read", None)
        if cancel is not None:
            try:
                cancel()
            except Exception:  # the port is closing under us on the source thread: the timeout covers it
                pass

    def _reject(self, reason: str) -> None:
        self._pending[reason] = self._pending.get(reason, 0) + 1

    def _flush(self) -> None:
        for reason, n in self._pending.items():
            self.counters.inc("reject." + reason, n)
        self._pending.clear()

    def _open(self) -> Any:
        return serial.serial_for_url(self.settings.port, **self._kwargs)

    def run(self, sink: Sink, stop: threading.Event) -> None:
        """Read, parse and deliver until ``stop`` is set or ``close`` is called; reconnects with backoff."""
        port = self.settings.port
        delay = self.settings.reconnect_min_s
        ever_connected = False
        outage_start: float | None = None
        logged: set[str] = set()  # what this outage already logged: once per outage, not per retry
        try:
            while not (stop.is_set() or self._closed.is_set()):
                try:
                    ser = self._open()
                except (serial.SerialException, OSError) as e:
                    self._state = DISCONNECTED
                    if outage_start is None:
                        outage_start = time.monotonic()
                    self._log_open_failure(port, e, logged)
                    self._sleep(stop, delay)
                    delay = min(delay * 2, self.settings.reconnect_max_s)
                    continue
                self._ser = ser
                if self._closed.is_set():  # close() ran before _ser was set: nobody cancelled this read
                    ser.close()
                    break
                self._state = CONNECTED
                delay = self.settings.reconnect_min_s
                if ever_connected:
                    self.counters.inc("source.reconnects")
                if outage_start is not None:
                    log.info("%s: connected again after %.1f s", port, time.monotonic() - outage_start)
                else:
                    log.info("%s: connected", port)
                ever_connected = True
                outage_start = None
                logged.clear()
                try:
                    self._pump(ser, sink, stop)
                except (serial.SerialException, OSError) as e:
                    self._state = DISCONNECTED
                    outage_start = time.monotonic()
                    log.warning("%s: disconnected (%s); reconnecting with backoff up to %g s",
                                port, e, self.settings.reconnect_max_s)
                    logged.add("disconnected")
                    self._sleep(stop, delay)
                    delay = min(delay * 2, self.settings.reconnect_max_s)
                finally:
                    self._ser = None
                    try:
                        ser.close()
                    except Exception:  # the device is already gone
                        pass
                    self._flush()
        finally:
            self.problems = []
            self._state = FINISHED

    def _no_terminator(self, data: bytes) -> None:
        """Say that the data has no configured terminator, and which one it seems to have."""
        name = self.settings.terminator
        seen = [t for t, b in (("crlf", b"\r\n"), ("lf", b"\n"), ("cr", b"\r")) if b in data and t != name]
        hint = f" (the data has {seen[0].upper()}: EDGE_AGENT_SOURCE__TERMINATOR={seen[0]}?)" if seen else ""
        self.problems = [f"no line terminator in {self.no_terminator_bytes} bytes{hint}"]
        log.warning("%s: %s; no readings until one arrives", self.settings.port, self.problems[0])

    def _log_open_failure(self, port: str, e: BaseException, logged: set[str]) -> None:
        code = getattr(e, "errno", None)
        if code == errno.EACCES or isinstance(e, PermissionError):
            if "eacces" not in logged:
                logged.add("eacces")
                log.error("%s", permission_message(port))
        elif "open" not in logged and "disconnected" not in logged:
            logged.add("open")
            log.warning("%s: cannot open (%s); retrying with backoff up to %g s",
                        port, e, self.settings.reconnect_max_s)
        else:
            log.debug("%s: still cannot open (%s)", port, e)

    def _sleep(self, stop: threading.Event, delay: float) -> None:
        """Back off for ``delay`` seconds, waking early for ``stop`` or ``close``."""
        deadline = time.monotonic() + delay
        while not self._closed.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or stop.wait(min(left, READ_TIMEOUT_S)):
                return

    def _pump(self, ser: Any, sink: Sink, stop: threading.Event) -> None:
        """Read bulk chunks, split, parse and deliver until stop/close; raises when the port goes away."""
        splitter = self._splitter
        splitter.reset(drop_first=True)
        opened, first = time.monotonic(), True
        parse = self.parser.parse
        counters = self.counters
        closed = self._closed
        pacer = Pacer(self.settings.gather_ms / 1000)
        while not (stop.is_set() or closed.is_set()):
            n = ser.in_waiting
            data = ser.read(min(max(1, n), MAX_READ))
            if not data:
                if self._pending:
                    self._flush()
                continue
            if first:
                first = False
                if n == 0 and time.monotonic() - opened >= QUIET_S:
                    splitter.reset(drop_first=False)  # quiet since the open: this byte starts a line
            counters.inc("source.bytes", len(data))
            lines = splitter.feed(data)
            if not lines:
                if splitter.unterminated > self.no_terminator_bytes and not self.problems:
                    self._no_terminator(data)
                if self._pending:
                    self._flush()
                continue
            if self.problems:
                log.info("%s: lines arrive again", self.settings.port)
                self.problems = []
            counters.inc("source.lines", len(lines))
            readings: list[Reading] = []
            for line in lines:
                # one receipt time per line, never per read: lines of one read must not share a time (agent/receipt.py)
                r = parse(line, receipt_time())
                if isinstance(r, Reading):
                    readings.append(r)
                elif r == HEADER:
                    counters.inc("source.headers")
                else:
                    self._reject(r)
            if readings:
                counters.inc("source.readings", len(readings))
                # the lines of one read are one Block (the batched pipeline takes it whole), order kept
                for rec in coalesce(readings) if len(readings) > 1 else readings:
                    sink(rec)
            if self._pending:
                self._flush()
            wait = pacer.after(len(readings), len(data))
            if wait:
                closed.wait(wait)  # a busy stream: let the next lines gather in the port's buffer (Pacer)
