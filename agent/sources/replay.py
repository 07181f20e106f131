"""Replay source: a recorded CSV played back as if it were a live sensor (demo, evaluation, tests).

Reads SKAB's format (``;``-separated, header row, a ``datetime`` column ``YYYY-MM-DD hh:mm:ss`` taken as UTC)
and any similar CSV (``,`` or ``;``; a ``datetime``, ``timestamp`` or ``ts`` column with ISO 8601 text or epoch
seconds). Data timestamps come from the file; ``speed`` paces the playback (0 = as fast as the pipeline takes).
Runs on the source thread.
"""

from __future__ import annotations

import csv
import logging
import threading
import time
from pathlib import Path
from typing import Iterator

from agent.bundled import demo_recording_path
from agent.counters import Counters
from agent.parse import timestamp
from agent.records import Reading
from agent.settings import ReplaySourceSettings
from agent.sources import CONNECTED, CONNECTING, FINISHED, Sink

log = logging.getLogger(__name__)

TIME_COLUMNS = ("datetime", "timestamp", "ts", "time")
LABEL_COLUMNS = ("anomaly", "changepoint")  # labels of a labelled recording (SKAB): never channels


def _split_header(line: str) -> tuple[str, list[str]]:
    """The delimiter (``;`` or ``,``) and the stripped column names of a header line."""
    delimiter = ";" if line.count(";") > line.count(",") else ","
    return delimiter, [h.strip() for h in next(csv.reader([line], delimiter=delimiter), [])]


def recording_columns(path: Path, header: list[str]) -> tuple[int, list[tuple[int, str]]]:
    """The time column and the named value columns (index, name) of a recording's header; ValueError when it has
    no time column or names a value column twice (the second would silently replace the first). A column without a
    name (a trailing separator, as spreadsheets write them) is not read."""
    tcol = next((i for i, h in enumerate(header) if h.lower() in TIME_COLUMNS), None)
    if tcol is None:
        raise ValueError(f"{path}: no time column (one of {', '.join(TIME_COLUMNS)}) in the header")
    names = [(i, h) for i, h in enumerate(header) if i != tcol and h]
    seen: dict[str, int] = {}
    for i, h in names:
        if h in seen:
            raise ValueError(f"{path}: column {h!r} appears twice in the header (columns {seen[h] + 1} and {i + 1}): "
                             "give each column its own name")
        seen[h] = i
    return tcol, names


def recording_channels(path: Path) -> list[str]:
    """The channels of a recording: its named columns other than time and label columns, in file order; ValueError
    as :func:`recording_columns`."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        _, header = _split_header(f.readline())
    _, names = recording_columns(path, header)
    return [h for _, h in names if h.lower() not in TIME_COLUMNS and h not in LABEL_COLUMNS]


def read_recording(path: Path, counters: Counters, sensor: str = "replay") -> Iterator[Reading]:
    """Readings of a recorded CSV in file order; a bad row is counted (``reject.<reason>``) and skipped."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        delimiter, header = _split_header(f.readline())
        tcol, names = recording_columns(path, header)
        for row in csv.reader(f, delimiter=delimiter):
            counters.inc("source.bytes", sum(map(len, row)) + len(row))  # the line as read: fields, separators, newline
            if not row:
                continue
            if len(row) != len(header):
                counters.inc("reject.field_count")
                continue
            ts = timestamp(row[tcol])
            if ts is None:
                counters.inc("reject.bad_timestamp")
                continue
            values: dict[str, float | str] = {}
            for i, name in names:
                text = row[i]
                try:
                    values[name] = float(text)
                except ValueError:
                    values[name] = text
            yield Reading(ts=ts, values=values, sensor=sensor)


class ReplaySource:
    """Plays a recording once (or in a loop) at ``speed`` times the recorded pace."""

    live = False

    def __init__(self, settings: ReplaySourceSettings, counters: Counters):
        self.settings = settings
        self.path = Path(settings.path) if settings.path is not None else demo_recording_path()
        self.name = f"replay:{self.path.name}"
        self.counters = counters
        self._state = CONNECTING
        self._closed = threading.Event()
        if not self.path.is_file():
            raise FileNotFoundError(f"EDGE_AGENT_SOURCE__PATH={self.path}: no such file (a recorded CSV to replay)")
        self._channels = recording_channels(self.path)  # a header it cannot play is refused at start (exit 78)
        self.problems: list[str] = []

    @property
    def channels(self) -> list[str] | None:
        """The recording's columns other than its time column, in file order."""
        return list(self._channels)

    @property
    def state(self) -> str:
        return self._state

    def run(self, sink: Sink, stop: threading.Event) -> None:
        speed = self.settings.speed
        offset = 0.0  # added to the file's timestamps on each loop, so that time keeps moving forward
        wall0: float | None = None  # the wall clock and data time of the first reading paced (set together)
        data0 = 0.0
        while True:
            self._state = CONNECTED
            first = last = None
            for r in read_recording(self.path, self.counters, self.settings.sensor):
                if stop.is_set() or self._closed.is_set():
                    self._state = FINISHED
                    return
                first = r.ts if first is None else first
                last = r.ts
                ts = r.ts + offset
                if speed > 0:
                    if wall0 is None:
                        wall0, data0 = time.monotonic(), ts
                    delay = wall0 + (ts - data0) / speed - time.monotonic()
                    if delay > 0 and (stop.wait(delay) or self._closed.is_set()):
                        self._state = FINISHED
                        return
                self.counters.inc("source.readings")
                sink(Reading(ts=ts, values=r.values, sensor=r.sensor) if offset else r)
            if not self.settings.loop or first is None or last is None:
                break
            offset += last - first + 1.0
            log.info("replay of %s looping", self.path.name)
        self._state = FINISHED

    def close(self) -> None:
        self._closed.set()
