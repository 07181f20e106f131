"""The readings queue between the sources and the pipeline thread: bounded and counted in readings (a Block is
len(block) readings), a live source drops the oldest readings, a recording waits, the pipeline takes blocks."""

from __future__ import annotations

import json
import threading
import time

import numpy as np

from agent.counters import Counters
from agent.records import Block, Reading
from agent.runtime import END, ReadingQueue, Readings


def _r(i: int) -> Reading:
    return Reading(float(i), {"a": float(i)}, "s")


def _block(first: int, n: int) -> Block:
    ts = np.arange(first, first + n, dtype=np.float64)
    return Block(ts, ("a",), ts.reshape(-1, 1).copy(), "s")


def _stamps(items) -> list[float]:
    out: list[float] = []
    for it in items:
        out.extend(it.ts.tolist() if isinstance(it, Block) else [it.ts])
    return out


def test_a_block_counts_as_its_readings_in_depth_and_in_drops():
    counters = Counters()
    readings = Readings(10, counters, threading.Event())
    sink = readings.sink(live=True)
    for i in range(4):
        sink(_r(i))
    sink(_block(4, 5))
    assert readings.queue.qsize() == 9 and counters.get("queue.dropped") == 0
    sink(_block(9, 4))  # 13 readings for 10 places: the 3 oldest go
    assert readings.queue.qsize() == 10 and counters.get("queue.dropped") == 3
    got = readings.queue.get_many(100, 0.0)
    assert _stamps(got) == [float(i) for i in range(3, 13)]
    assert readings.queue.qsize() == 0


def test_the_oldest_rows_of_a_block_are_cut_not_the_whole_block():
    q = ReadingQueue(10)
    q.put_drop(_block(0, 8))
    assert q.put_drop(_block(8, 6)) == 4
    got = q.get_many(100, 0.0)
    assert _stamps(got) == [float(i) for i in range(4, 14)] and len(got) == 2


def test_a_block_larger_than_the_queue_keeps_its_newest_rows():
    q = ReadingQueue(10)
    assert q.put_drop(_block(0, 25)) == 15
    assert _stamps(q.get_many(100, 0.0)) == [float(i) for i in range(15, 25)]


def test_end_markers_are_never_dropped():
    q = ReadingQueue(10)
    q.put_drop(END)
    for i in range(30):
        q.put_drop(_r(i))
    got = q.get_many(100, 0.0)
    assert got.count(END) == 1 and _stamps([g for g in got if g is not END]) == [float(i) for i in range(20, 30)]


def test_get_many_takes_up_to_the_limit_in_order_and_leaves_the_rest():
    q = ReadingQueue(1000)
    for i in range(10):
        q.put_drop(_r(i))
    q.put_drop(_block(10, 6))
    first = q.get_many(8, 0.0)
    assert _stamps(first) == [float(i) for i in range(8)] and q.qsize() == 8
    second = q.get_many(8, 0.0)  # two readings, then the block of 6: exactly 8
    assert _stamps(second) == [float(i) for i in range(8, 16)] and q.qsize() == 0
    assert q.get_many(8, 0.0) == []


def test_a_block_over_the_limit_is_taken_whole_when_first():
    q = ReadingQueue(1000)
    q.put_drop(_block(0, 600))
    q.put_drop(_r(600))
    assert _stamps(q.get_many(512, 0.0)) == [float(i) for i in range(600)]
    assert q.qsize() == 1


def test_a_recording_waits_for_room_and_loses_nothing():
    counters = Counters()
    readings = Readings(10, counters, threading.Event())
    sink = readings.sink(live=False)
    done = threading.Event()

    def produce() -> None:
        for i in range(50):
            sink(_r(i))
        sink(_block(50, 30))  # larger than the queue: goes in once the queue is empty
        done.set()

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    got: list = []
    while not (done.is_set() and readings.queue.qsize() == 0):
        got.extend(readings.queue.get_many(7, 0.05))
        assert readings.queue.qsize() <= 30
    t.join(10)
    got.extend(readings.queue.get_many(100, 0.0))
    assert _stamps(got) == [float(i) for i in range(80)]
    assert counters.get("queue.dropped") == 0


def test_a_waiting_recording_gives_up_on_stop():
    stop = threading.Event()
    q = ReadingQueue(10)
    for i in range(10):
        q.put_wait(_r(i), stop)
    stop.set()
    q.put_wait(_r(10), stop)  # returns (the process is stopping), does not queue
    assert q.qsize() == 10


def _comparable(payload: dict) -> dict:
    """A message payload without what differs between two runs (random ids, creation time, the outbox's seq)."""
    return {k: v for k, v in payload.items() if k not in ("id", "alert_id", "evidence_id", "created_at", "seq")}


def test_the_pipeline_loop_takes_blocks_and_sends_what_reading_by_reading_sends(tmp_path):
    """The daemon's pipeline thread (PipelineLoop.run, real pipeline and outbox) fed the demo recording as a mix of
    Readings and Blocks, plus a block for an asset that does not exist: the same messages in the outbox as the
    pipeline gives reading by reading, and the unknown asset's rows counted as readings."""
    from agent.bundled import demo_recording_path
    from agent.sources.replay import read_recording
    from tests.unit.test_commands import make_agent

    readings = list(read_recording(demo_recording_path(), Counters(), sensor="replay"))
    sizes = [1, 3, 700, 2, 50]  # readings, then blocks, in turns; then a block for no asset; then the rest
    ref = make_agent(tmp_path / "ref")
    events: list = []
    for k, r in enumerate(readings):
        if k == sum(sizes):
            ref.counters.inc("reject.unknown_asset", 4)  # what the loop counts there (in that period's summary)
        events += ref.pipeline.process(r)
    events += ref.pipeline.finish()
    want = [(m.kind, m.topic_suffix, _comparable(dict(m.payload))) for m in ref.assets[0].messages.outgoing(events)]
    ref.outbox.close()
    ref.evidence.close()
    assert [w[0] for w in want].count("alert") >= 2

    a = make_agent(tmp_path / "a")
    channels = list(a.pipeline.model.sidecar.channels)
    sink = a.readings.sink(live=False)
    i = 0
    for size in sizes:
        part = readings[i:i + size]
        if size >= 50:
            sink(Block(np.array([r.ts for r in part]), tuple(channels),
                       np.array([[r.values[c] for c in channels] for r in part]), "replay"))
        else:
            for r in part:
                sink(r)
        i += size
    sink(Block(np.arange(4.0), tuple(channels), np.zeros((4, len(channels))), "replay", asset="nowhere"))
    for r in readings[i:]:
        sink(r)
    a.readings.end()
    a.loop.run()  # one source: returns after its END, every asset finished
    got = [(row.kind, row.topic, _comparable(json.loads(row.payload))) for row in a.outbox.pending(10_000)]
    assert a.counters.get("reject.unknown_asset") == 4
    assert a.counters.get("pipeline.windows") == ref.counters.get("pipeline.windows")
    a.outbox.close()
    a.evidence.close()
    assert sorted(got, key=repr) == sorted(want, key=repr)  # the outbox drains alerts first: compare as sets


def test_a_silent_sensor_goes_stale_while_another_keeps_the_queue_busy(tmp_path):
    """The live loop's periodic work (silence, summary periods) also runs while readings keep coming: a sensor that
    stops is marked stale although the queue is never empty for long (it used to run only when the queue was
    quiet for 0.2 s)."""
    from agent.bundled import demo_recording_path
    from agent.sources.replay import read_recording
    from tests.unit.test_commands import make_agent

    rows = list(read_recording(demo_recording_path(), Counters(), sensor="replay"))
    a = make_agent(tmp_path / "a", EDGE_AGENT_CLEANING__MAX_HOLD_S="0.5", EDGE_AGENT_CALIBRATION__SAMPLES="0")
    a.loop.live = frozenset({""})  # the asset fed by a live source: periodic work on
    sink = a.readings.sink(live=True)
    stop = threading.Event()

    def stream() -> None:  # pump1 every 20 ms for ever (data time follows the clock); pump2 only at the start
        t0 = time.time()
        for i, r in enumerate(rows * 10):
            if stop.is_set():
                return
            ts = t0 + 0.02 * i
            sink(Reading(ts, r.values, "pump1"))
            if i < 20:
                sink(Reading(ts, r.values, "pump2"))
            time.sleep(0.02)

    producer = threading.Thread(target=stream, daemon=True)
    loop = threading.Thread(target=a.loop.run, daemon=True)
    producer.start()
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(c.startswith("pump2/") for c in a.pipeline.snapshot.stale_channels):
            time.sleep(0.05)
        stale = a.pipeline.snapshot.stale_channels
        assert any(c.startswith("pump2/") for c in stale), stale
        assert not any(c.startswith("pump1/") for c in stale), stale
    finally:
        stop.set()
        producer.join(5)
        a.readings.end()
        loop.join(10)
        a.outbox.close()
        a.evidence.close()
