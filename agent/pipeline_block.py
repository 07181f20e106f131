"""``Pipeline.process_block``: a block of one asset's readings cleaned, windowed, scored and judged at once.

The readings are turned into runs of one sensor's rows (timestamps and a rows x channels array in the model's
order: a Block's columns, or the readings' values); a run's common-case rows (``agent.clean_block``) are cleaned
in numpy, their hop-1 windows are a strided view of the rows, scored in one batched invoke, and judged in a loop
only when a window may change an alert (``AlertMachine.quiet``). Every other row goes through the per-reading
code in its turn. Summaries are cut where their period ends, evidence rows are recorded up to each alert, so
the events, counters and state are those of ``Pipeline.process`` on each reading (``tests/unit/
test_pipeline_block.py`` compares the two on clean and dirty data; ``test_evaluate_pin`` pins the numbers).
"""

from __future__ import annotations

import time
from itertools import chain
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, cast

import numpy as np

from agent.clean_block import CleanRun, getter, rows_ok
from agent.decide import RAISED
from agent.records import BLOCK_MIN, Block, Event, Inference, Reading, Window

if TYPE_CHECKING:
    from agent.pipeline import Pipeline

MIN_BULK = BLOCK_MIN  # rows: a shorter run of clean rows goes through the per-reading code (agent.records.BLOCK_MIN)


def runs(items: Sequence[Reading | Block], channels: Sequence[str]) -> Iterator[tuple[str, np.ndarray, np.ndarray, Callable[[int], Reading]]]:
    """(sensor, timestamps, rows x channels float64 with NaN where a channel is not a plain number, the reading of
    row i) for each run of consecutive readings of one sensor and for each block."""
    get = getter(channels)
    i, n = 0, len(items)
    while i < n:
        item = items[i]
        if type(item) is Block:
            yield _block_run(item, channels)
            i += 1
            continue
        j = i + 1
        sensor = item.sensor
        while j < n and type(items[j]) is not Block and items[j].sensor == sensor:
            j += 1
        group = cast("Sequence[Reading]", items[i:j])  # the loop above stopped at the first Block
        yield sensor, *_readings_run(group, get, len(channels)), group.__getitem__
        i = j


def _readings_run(group: Sequence[Reading], get: Callable[[Any], tuple[Any, ...]], width: int) -> tuple[np.ndarray, np.ndarray]:
    rows: list[Any] = []
    for r in group:
        try:
            rows.append(get(r.values))
        except KeyError:
            rows.append(None)
    ts = np.fromiter((r.ts if type(r.ts) is float else np.nan for r in group), np.float64, len(group))
    if None not in rows and set(map(type, chain.from_iterable(rows))) == {float}:
        return ts, np.array(rows, dtype=np.float64).reshape(len(group), width)
    x = np.full((len(group), width), np.nan)
    for k, row in enumerate(rows):  # a missing or non-number channel: NaN here, the per-reading code counts it
        if row is not None and all(type(v) is float for v in row):
            x[k] = row
    return ts, x


def well_formed(b: Block) -> bool:
    """A Block whose arrays agree with each other (timestamps n, values n x channels, numbers): anything else is
    a source's bug, counted as ``reject.bad_block`` instead of stopping the pipeline thread."""
    ts, v = b.ts, b.values
    return (isinstance(ts, np.ndarray) and isinstance(v, np.ndarray) and ts.ndim == 1 and v.ndim == 2
            and v.shape == (ts.shape[0], len(b.channels)) and ts.dtype.kind in "fiu" and v.dtype.kind in "fiu")


def drop_bad_blocks(items: Sequence[Reading | Block], counters: Any) -> list[Reading | Block]:
    """``items`` without the blocks that are not ``well_formed`` (each counted by its rows, at least one)."""
    out: list[Reading | Block] = []
    for it in items:
        if type(it) is Block and not well_formed(it):
            rows = getattr(it.ts, "shape", (1,))
            counters.inc("reject.bad_block", max(1, int(rows[0]) if len(rows) == 1 else 1))
            continue
        out.append(it)
    return out


def _block_run(b: Block, channels: Sequence[str]) -> tuple[str, np.ndarray, np.ndarray, Callable[[int], Reading]]:
    names = b.channels

    def reading(i: int) -> Reading:
        return Reading(float(b.ts[i]), dict(zip(names, map(float, b.values[i]))), b.sensor, b.asset)

    try:
        idx = [names.index(c) for c in channels]
    except ValueError:  # a model channel the block does not carry: every row is counted by the per-reading code
        return b.sensor, np.asarray(b.ts, dtype=np.float64), np.full((len(b), len(channels)), np.nan), reading
    x = np.ascontiguousarray(np.asarray(b.values, dtype=np.float64)[:, idx])  # row-major, as the readings' rows
    return b.sensor, np.asarray(b.ts, dtype=np.float64), x, reading


def process_block(p: "Pipeline", items: Sequence[Reading | Block]) -> list[Event]:
    """The events of ``items`` (one asset's, in arrival order), as ``p.process`` on each reading would give."""
    out: list[Event] = []
    cleaner = p.cleaner
    for sensor, ts, x, reading in runs(items, cleaner.channels):  # type: ignore[union-attr]
        run = CleanRun(ts, x, rows_ok(cleaner, x) & np.isfinite(ts))  # type: ignore[arg-type]
        i, n = 0, len(ts)
        while i < n:
            if not p.batchable:  # teach-in (re)started, a command: the rest one by one
                for k in range(i, n):
                    out.extend(p.process(reading(k)))
                break
            now = p._clock()  # noqa: SLF001
            j = run.bulk(cleaner, sensor, i, now)  # type: ignore[arg-type]
            if j < MIN_BULK:
                out.extend(p._process(reading(i)))  # noqa: SLF001
                i += 1
                continue
            run.accept(cleaner, sensor, i, i + j, now)  # type: ignore[arg-type]
            out.extend(_clean_rows(p, sensor, ts[i:i + j], x[i:i + j]))
            i += j
    return out


def _clean_rows(p: "Pipeline", sensor: str, ts: np.ndarray, x: np.ndarray) -> list[Event]:
    """Cleaned rows of one sensor, cut where a summary period ends."""
    out: list[Event] = []
    s = p.summaries.summariser
    start, m = 0, len(ts)
    while start < m:
        began = s.period_start is not None
        origin = s.period_start if began else float(ts[start])
        hits = np.flatnonzero(ts[start:] - origin >= s.interval_s)
        if began and hits.size and hits[0] == 0:
            out.append(p._summary(float(ts[start])))  # noqa: SLF001 - due before this row is added
            continue
        end = start + int(hits[0]) if hits.size else m
        out.extend(_segment(p, sensor, ts[start:end], x[start:end]))
        start = end
    return out


def _segment(p: "Pipeline", sensor: str, ts: np.ndarray, x: np.ndarray) -> list[Event]:
    """Cleaned rows inside one summary period: statistics, windows, one batched score, decisions."""
    s = p.summaries.summariser
    s.add_rows(ts, x)
    p._last_arrival = time.monotonic()  # noqa: SLF001
    rec = p.recorder
    idx, windows, starts, ends = p.windower.push_rows(sensor, ts, x)
    nw = len(idx)
    if nw == 0 or p.scorer is None:
        if rec is not None:
            rec.add_rows(sensor, ts, x)
        return []
    t0 = time.perf_counter()
    if p.scorer.timed:  # a daily profile: the windows' spans in data time (agent/season.py)
        scores, contributions = p.scorer.score_windows(windows, sensor, np.asarray(starts), np.asarray(ends))
    else:
        scores, contributions = p.scorer.score_windows(windows, sensor)
    latency = (time.perf_counter() - t0) / nw
    for _ in range(min(nw, 64)):
        p.latencies.add(latency)
    p.counters.inc("pipeline.windows", nw)
    values = scores.tolist()
    s.add_scores(scores)
    keep = p.recent.maxlen
    assert keep is not None  # Pipeline.recent is a deque(maxlen=32): the canary's windows are bounded
    p.recent.extend(windows[-keep:])

    def inference(k: int) -> Inference:  # the windows' rows are never written to again: a view will do
        win = Window(sensor=sensor, start_ts=float(starts[k]), end_ts=float(ends[k]), data=windows[k])
        return Inference(window=win, score=values[k], contributions=contributions(k), latency_s=latency)

    machine = p.decisions.machine(sensor)
    out: list[Event] = []
    recorded = k = 0
    while True:
        quiet = machine.first_change(scores[k:])  # windows that change nothing but the alert's history
        held = p.decisions.held_until(sensor)
        if held is not None:  # an alert held back by the policy: the first window that may raise it is judged
            due = np.flatnonzero((ends[k:k + quiet] >= held[1]) | (ends[k:k + quiet] < held[0]))
            quiet = int(due[0]) if due.size else quiet
        machine.absorb(scores[k:k + quiet])
        k += quiet
        if k >= nw:
            break
        inf = inference(k)
        t, suppressed = p.decisions.judge(inf)
        if suppressed:
            s.suppressed += 1
        if t is not None:
            row = int(idx[k]) + 1
            if rec is not None:  # the evidence holds the readings up to the one that completed this window
                rec.add_rows(sensor, ts[recorded:row], x[recorded:row])
                recorded = row
            alert = p._alert(t)  # noqa: SLF001
            out.append(alert)
            if t.state == RAISED and p.advisor is not None:
                advice = p.advisor.advise(p.scorer, inf.window, alert.alert_id, inf.score, t.threshold, p.asset)
                if advice is not None:
                    out.append(advice)
        k += 1
    if rec is not None:
        rec.add_rows(sensor, ts[recorded:], x[recorded:])
    p.last_inference = inference(nw - 1)
    return out
