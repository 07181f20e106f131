"""MqttSource against a real mosquitto: topic mapping, payloads, rejections, broker restart, close, credentials,
and the whole agent fed over MQTT compared with the replay source on the same recording."""

from __future__ import annotations

import getpass
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.bundled import demo_recording_path
from agent.counters import Counters
from agent.assets import build_feeds
from agent.records import Block, Reading
from agent.settings import MqttSettings, MqttSourceSettings, load_settings
from agent.sources import CONNECTED, CONNECTING, DISCONNECTED, FINISHED
from agent.sources.mqtt import (
    MAX_PAYLOAD_BYTES,
    MqttSource,
    client_id_for,
    compile_sensor_pattern,
)
from agent.sources.replay import read_recording
from tests.conftest import (
    ROOT,
    Broker,
    agent_env,
    free_port,
    run_agent,
    visits,
    wait_for,
)

PATTERN = "plant/{sensor}/telemetry"


class Runner:
    """An MqttSource running on its own thread; keeps its readings and any exception that ended the thread."""

    def __init__(self, source: MqttSource, sink: Any = None) -> None:
        self.source = source
        self.readings: list[Reading] = []
        self.sink = sink or self.readings.append
        self.error: BaseException | None = None
        self.returned = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._main, name="test-mqtt-source")
        self.thread.start()

    def _main(self) -> None:
        try:
            self.source.run(self.sink, self.stop)
            self.returned = True
        except BaseException as e:  # noqa: BLE001 - reported by finish()
            self.error = e

    def subscribed(self, timeout: float = 15) -> None:
        wait_for(lambda: self.source.subscribed.is_set() or self.error, timeout=timeout, what="subscription")
        assert self.error is None, repr(self.error)
        assert self.source.state == CONNECTED

    def finish(self, timeout: float = 5) -> float:
        """close(), then assert run() returned normally within ``timeout``; the seconds it took."""
        t0 = time.monotonic()
        self.source.close()
        self.thread.join(timeout)
        took = time.monotonic() - t0
        assert not self.thread.is_alive(), f"run() still running {timeout} s after close()"
        assert self.error is None, f"source thread died: {self.error!r}"
        assert self.returned
        assert self.source.state == FINISHED
        return took


class Publisher:
    def __init__(self, port: int) -> None:
        client_id = f"test-pub-{os.getpid()}-{time.monotonic_ns()}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def pub(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=10)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(live_broker: Broker) -> Iterator[Publisher]:
    p = Publisher(live_broker.port)
    yield p
    p.close()


@pytest.fixture
def runners() -> Iterator[list[Runner]]:
    """Runners to close at the end of a test even when it fails half-way."""
    made: list[Runner] = []
    yield made
    for r in made:
        r.source.close()
        r.thread.join(5)


def start(runners: list[Runner], port: int, upstream_port: int | None = None, sink: Any = None,
          blocks: bool = True, **kw: Any) -> Runner:
    kw.setdefault("topics", ["plant/+/telemetry"])
    kw.setdefault("sensor_pattern", PATTERN)
    source = MqttSource(
        MqttSourceSettings(**kw), MqttSettings(host="127.0.0.1", port=upstream_port or port), Counters(),
        blocks=blocks,
    )
    r = Runner(source, sink)
    runners.append(r)
    return r


# -- topics -----------------------------------------------------------------------------------------------------


def test_wildcard_filters_map_topics_to_sensor_ids(live_broker: Broker, publisher: Publisher,
                                                   runners: list[Runner]) -> None:
    r = start(runners, live_broker.port, topics=["plant/+/telemetry", "lab/+/telemetry", "misc/#"],
              sensor_pattern="+/{sensor}/telemetry", qos=1)
    r.subscribed()
    assert r.source.granted_qos == {"plant/+/telemetry": 1, "lab/+/telemetry": 1, "misc/#": 1}
    publisher.pub("plant/pump-1/telemetry", '{"Current": 1.5}')
    publisher.pub("lab/rig7/telemetry", '{"Current": 2.5}')
    publisher.pub("misc/pump-1/other", "3")  # subscribed, but not the pattern's shape
    publisher.pub("elsewhere/pump-9/telemetry", "4")  # not subscribed at all
    publisher.pub("plant/pump-2/telemetry", '{"Current": 5.5}')
    c = r.source.counters
    wait_for(lambda: c.get("source.messages") == 4, what="4 messages")
    time.sleep(0.2)  # nothing else comes
    assert [(x.sensor, dict(x.values)) for x in r.readings] == [
        ("pump-1", {"Current": 1.5}), ("rig7", {"Current": 2.5}), ("pump-2", {"Current": 5.5}),
    ]
    assert c.get("source.messages") == 4 and c.get("source.readings") == 3
    assert c.get("reject.topic_mismatch") == 1
    r.finish()


def test_assets_on_one_broker_keep_their_own_qos_and_payload_limit(tmp_path: Path, live_broker: Broker,
                                                                    publisher: Publisher, runners: list[Runner]) -> None:
    """Two mqtt assets on one broker share one client (agent.assets.build_feeds): each asset's topics are subscribed
    at its own qos and its payloads held to its own max_payload_bytes, not those of the first asset."""
    config = tmp_path / "gateway.toml"
    config.write_text("""
[[assets]]
id = "a"
source = { kind = "mqtt", topics = ["a/+"], sensor_pattern = "a/{sensor}" }
[[assets]]
id = "b"
source = { kind = "mqtt", topics = ["b/+"], sensor_pattern = "b/{sensor}", qos = 1, max_payload_bytes = 4194304 }
""")
    settings = load_settings(environ={
        "EDGE_AGENT_CONFIG_FILE": str(config), "EDGE_AGENT_STATE_DIR": str(tmp_path / "state"),
        "EDGE_AGENT_DEVICE_ID": "gw", "EDGE_AGENT_MQTT__HOST": "127.0.0.1", "EDGE_AGENT_MQTT__PORT": str(live_broker.port),
    })
    [feed] = build_feeds(settings, Counters())
    assert feed.assets == ("a", "b")
    r = Runner(feed.source)
    runners.append(r)
    r.subscribed()
    assert r.source.granted_qos == {"a/+": 0, "b/+": 1}
    big = json.dumps({"period_s": 0.001, "ts": 1.7e9, "values": {"x": [0.5] * 9000, "y": [0.25] * 9000}}).encode()
    assert MAX_PAYLOAD_BYTES < len(big) < 4194304  # over a's limit (the default), within b's
    publisher.pub("a/s1", big)
    publisher.pub("b/s1", big)
    c = r.source.counters
    wait_for(lambda: r.readings, what="b's block")
    wait_for(lambda: c.get("source.messages") == 2, what="both messages")
    assert c.snapshot("reject.") == {"payload_too_large": 1}  # a's
    assert [(x.asset, x.sensor, len(x)) for x in r.readings] == [("b", "s1", 9000)]
    r.finish()


def test_empty_pattern_makes_the_whole_topic_the_sensor_id(live_broker: Broker, publisher: Publisher,
                                                           runners: list[Runner]) -> None:
    r = start(runners, live_broker.port, topics=["site/#"], sensor_pattern="")
    r.subscribed()
    publisher.pub("site/a/b", "1")
    wait_for(lambda: r.readings, what="a reading")
    assert r.readings[0].sensor == "site/a/b"
    r.finish()


def test_sensor_pattern_and_filter_validation() -> None:
    rx = compile_sensor_pattern("+/line-{sensor}/#")
    assert rx is not None
    m = rx.fullmatch("x/line-7/a/b")
    assert m and m.group("sensor") == "7"
    assert rx.fullmatch("x/line-7") and not rx.fullmatch("x/belt-7/a")
    dotted = compile_sensor_pattern("a.b/{sensor}")
    assert dotted is not None and not dotted.fullmatch("axb/1")  # literals are literal
    up = MqttSettings(host="127.0.0.1")
    for bad in ({"topics": ["plant/#/x"]}, {"topics": ["plant/p+/x"]}, {"topics": ["a"], "sensor_pattern": "plant/x"},
                {"topics": ["a"], "sensor_pattern": "{sensor}/{sensor}"},
                {"topics": ["a"], "sensor_pattern": "#/{sensor}"}):
        with pytest.raises(ValueError):
            MqttSource(MqttSourceSettings(**bad), up, Counters())
    with pytest.raises(FileNotFoundError):
        MqttSource(MqttSourceSettings(topics=["a"], broker_password_file=Path("/nonexistent/pw")), up, Counters())


def test_client_id_differs_from_the_upstream_one() -> None:
    assert client_id_for(MqttSettings(client_id="gw-1")) == "gw-1-src"
    assert client_id_for(MqttSettings(), "gw-1") == "edge-agent-gw-1-src"
    a, b = client_id_for(MqttSettings()), client_id_for(MqttSettings())
    assert a.startswith("edge-agent-src-") and a != b


# -- payloads ---------------------------------------------------------------------------------------------------


def test_payload_variants_and_rejections(live_broker: Broker, publisher: Publisher, runners: list[Runner]) -> None:
    r = start(runners, live_broker.port, channel="temp", qos=1)
    r.subscribed()
    t = "plant/s1/telemetry"
    good: list[bytes] = [
        b'{"Current": 1.0, "Pressure": 2}',  # no timestamp: time of receipt
        b'{"ts": 1583750073, "Current": 3}',  # epoch seconds
        b'{"ts": 1583750073500, "Current": 4}',  # epoch milliseconds
        b'{"ts": "2020-03-09T10:34:33Z", "Current": 5}',  # ISO 8601
        b'{"ts": "2020-03-09T10:34:33.250+00:00", "Current": "6.5"}',  # numeric text is a number
        b"42.5",  # a JSON number
        b" 17 \n",  # plain number text
        b"nan",  # not JSON, but a number: the cleaner counts NaN, not the parser
        b'{"Current": "broken"}',  # non-numeric text is kept for the cleaner to count by channel
    ]
    bad: list[tuple[bytes, str]] = [
        (b"hello", "malformed"),
        (b"[1, 2]", "malformed"),
        (b"true", "malformed"),
        (b"\xff\xfe\x00", "not_utf8"),
        (b"", "empty"),
        (b"   ", "empty"),
        (b"{}", "empty"),
        (b'{"ts": 1583750073}', "empty"),
        (b'{"ts": "yesterday", "Current": 1}', "bad_timestamp"),
        (b'{"Current": 1', "malformed"),
        (b"1" * (MAX_PAYLOAD_BYTES + 1), "payload_too_large"),
    ]
    before = time.time()
    sent = 0
    for p in good + [b for b, _ in bad]:
        publisher.pub(t, p)
        sent += len(p)
    c = r.source.counters
    total = len(good) + len(bad)
    wait_for(lambda: c.get("source.messages") == total, what=f"{total} messages")
    after = time.time()
    assert c.get("source.bytes") == sent
    assert c.get("source.readings") == len(good) == len(r.readings)
    expected: dict[str, int] = {}
    for _, reason in bad:
        expected[reason] = expected.get(reason, 0) + 1
    assert c.snapshot("reject.") == expected
    got = r.readings
    assert all(x.sensor == "s1" for x in got)
    assert before <= got[0].ts <= after and got[0].values == {"Current": 1.0, "Pressure": 2.0}
    assert (got[1].ts, got[1].values) == (1583750073.0, {"Current": 3.0})
    assert (got[2].ts, got[2].values) == (1583750073.5, {"Current": 4.0})
    assert (got[3].ts, got[3].values) == (1583750073.0, {"Current": 5.0})
    assert (got[4].ts, got[4].values) == (1583750073.25, {"Current": 6.5})
    assert got[5].values == {"temp": 42.5} and before <= got[5].ts <= after
    assert got[6].values == {"temp": 17.0}
    assert list(got[7].values) == ["temp"] and math.isnan(float(got[7].values["temp"]))
    assert got[8].values == {"Current": "broken"}
    assert c.get("source.callback_errors") == 0
    r.finish()


@pytest.mark.parametrize("blocks", [False, True], ids=["rows", "blocks"])
def test_block_payloads_are_one_block_each_or_a_counted_reject(live_broker: Broker, publisher: Publisher,
                                                                runners: list[Runner], blocks: bool) -> None:
    handed: list[Reading | Block] = []
    r = start(runners, live_broker.port, sink=handed.append, qos=1, max_block_samples=2000, max_payload_bytes=200_000,
              blocks=blocks)
    r.subscribed()
    t = "plant/shaft-1/telemetry"
    n = 2000  # 2 x 2000 samples: ~50 KB, over the default payload limit's half, under the one set here
    big = {"ts": 1732960000.0, "period_s": 0.001, "values": {"x": [i / 7 for i in range(n)], "y": [-i for i in range(n)]}}
    good = [json.dumps(big).encode(),
            b'{"ts": 1732960002.0, "period_s": 0.5, "values": {"x": [1, null, 3]}}',
            b'{"ts": 1732960003.0, "x": 4}']  # the single-reading shapes keep working beside blocks
    bad = [(b'{"ts": 1, "period_s": 0.1, "values": {"x": [1, 2], "y": [1]}}', "block_length_mismatch"),
           (b'{"ts": 1, "period_s": 0.1, "values": {"x": [1, "two"]}}', "block_not_number"),
           (b'{"ts": 1, "values": {"x": [1, 2]}}', "block_no_period"),
           (json.dumps({"ts": 1, "period_s": 1, "values": {"x": [0] * 2001}}).encode(), "block_too_large")]
    for p in good + [b for b, _ in bad]:
        publisher.pub(t, p)
    c = r.source.counters
    wait_for(lambda: c.get("source.messages") == len(good) + len(bad), what="every message")
    assert c.snapshot("reject.") == {reason: 1 for _, reason in bad}
    assert c.get("source.readings") == n + 3 + 1 and c.get("source.blocks") == 2
    # with blocks off the source hands over one reading at a time
    rows = [x for h in handed for x in (h.rows() if isinstance(h, Block) else [h])]
    if blocks:  # the big block whole, not one reading at a time: 3 hand-overs, fewer when paho's loop read several
        # of the messages in one pass (on a loaded machine): each pass's run of one sensor is one Block
        assert isinstance(handed[0], Block) and len(handed[0]) >= n and len(handed) <= 3, [len(h) for h in handed]
    else:
        assert len(handed) == n + 4 and not any(isinstance(h, Block) for h in handed)
    assert len(rows) == n + 4 and all(x.sensor == "shaft-1" for x in rows)
    assert rows[0].ts == 1732960000.0 and rows[n - 1].ts == pytest.approx(1732960000.0 + (n - 1) * 0.001)
    assert rows[1].values == {"x": 1 / 7, "y": -1.0} and rows[n - 1].values == {"x": (n - 1) / 7, "y": float(1 - n)}
    assert [x.ts for x in rows[n:]] == [1732960002.0, 1732960002.5, 1732960003.0, 1732960003.0]
    assert math.isnan(rows[n + 1].values["x"]) and rows[n + 3].values == {"x": 4.0}
    assert c.get("source.callback_errors") == 0
    r.finish()


def test_a_burst_handed_over_in_blocks_is_the_same_readings_in_order(live_broker: Broker, publisher: Publisher,
                                                                      runners: list[Runner]) -> None:
    """With blocks on, what one pass of paho's loop received goes to the sink together, each sensor's run as a
    Block: the same readings, in the order they came, as one at a time."""
    handed: list[Reading | Block] = []
    r = start(runners, live_broker.port, sink=handed.append, blocks=True)
    r.subscribed()
    bodies = [(f"plant/s{i % 3 // 2}/telemetry", json.dumps({"ts": 1_700_000_000 + i, "x": i * 0.5, "y": -1.5}))
              for i in range(3000)]  # runs of two readings of s0, one of s1
    bodies.insert(100, ("plant/s0/telemetry", json.dumps({"ts": 1_700_000_099.5, "x": "ERR", "y": 1.5})))
    infos = [publisher.client.publish(t, b, qos=0) for t, b in bodies]
    infos[-1].wait_for_publish(10)
    c = r.source.counters
    wait_for(lambda: c.get("source.readings") == len(bodies), what="every message")
    wait_for(lambda: sum(len(h) if isinstance(h, Block) else 1 for h in handed) == len(bodies), what="handed over")
    rows = [x for h in handed for x in (h.rows() if isinstance(h, Block) else [h])]
    assert [(x.sensor, x.ts, dict(x.values)) for x in rows] == [
        (t.split("/")[1], float(json.loads(b)["ts"]), {k: v for k, v in json.loads(b).items() if k != "ts"})
        for t, b in bodies]
    assert all(isinstance(h, Reading) or len({x.sensor for x in h.rows()}) == 1 for h in handed)
    assert c.get("source.callback_errors") == 0
    r.finish()


def test_a_busy_stream_is_handed_over_a_few_messages_at_a_time_a_slow_one_at_once(
        live_broker: Broker, publisher: Publisher, runners: list[Runner]) -> None:
    """Pacing (agent.sources.Pacer): messages 10 ms apart reach the sink several per pass of paho's loop (one wake-up
    of the source and pipeline threads for several readings), none held much past GATHER_MS; messages 200 ms apart
    each at once; GATHER_MS=0 turns it off."""
    for gather_ms, rate, n in ((40, 100.0, 150), (0, 100.0, 150), (40, 5.0, 8)):
        handed: list[tuple[float, int]] = []

        def sink(rec: Reading | Block, handed: list[tuple[float, int]] = handed) -> None:
            handed.append((time.monotonic(), len(rec) if isinstance(rec, Block) else 1))

        r = start(runners, live_broker.port, sink=sink, gather_ms=gather_ms)
        r.subscribed()
        sent, t0 = [], time.monotonic()
        for i in range(n):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            publisher.client.publish("plant/s1/telemetry", json.dumps({"ts": 1_700_000_000 + i, "x": i}), qos=0)
            sent.append(time.monotonic())
        wait_for(lambda: sum(k for _, k in handed) == n, what=f"{n} readings")
        r.finish()
        per_pass = visits(handed)
        arrived = [t for t, k in handed for _ in range(k)]
        waited = sorted(a - s for a, s in zip(arrived, sent))
        if gather_ms and rate > 20:
            assert n / len(per_pass) >= 2.5, per_pass  # ~4 at 40 ms
            assert waited[-1] < gather_ms / 1000 + 0.25, waited[-5:]
        elif gather_ms:  # 200 ms apart: each message at once
            assert n / len(per_pass) < 1.6, per_pass
            assert waited[len(waited) // 2] < 0.02, waited  # not held back
        else:  # off: below what gathering gives (a loaded machine lets paho's loop read a few messages per pass by
            # itself: 150 in 91 passes seen with the suite's four workers busy), and none held back
            assert n / len(per_pass) < 2.5, per_pass
            assert waited[len(waited) // 2] < 0.02, waited


def test_packets_decoded_from_the_read_buffer_are_those_paho_decodes(live_broker: Broker, publisher: Publisher,
                                                                      runners: list[Runner]) -> None:
    """QoS 0 PUBLISH packets are decoded straight from the read buffer (agent/sources/mqtt_read.py), everything else
    by paho: at every remaining-length size (1 to 4 bytes), QoS 0 and 1 interleaved, and in a burst that the socket
    delivers in pieces, every message arrives once, in order, with its payload (retained ones: the next test); a
    message alone in its read is decoded from the buffer as well."""
    got: list[tuple[str, bytes, bool]] = []
    fast: list[bool] = []  # decoded from the buffer (topic as bytes) or by paho (str)
    r = start(runners, live_broker.port, qos=1)
    src = r.source
    on_publish = src._on_publish

    def spy(topic: str | bytes, payload: bytes, retain: bool) -> None:  # what the source is handed, then the source
        got.append((topic.decode() if isinstance(topic, bytes) else topic, bytes(payload), retain))
        fast.append(isinstance(topic, bytes))
        on_publish(topic, payload, retain)

    src._on_publish = spy  # type: ignore[method-assign]
    src.client.fast_publish = spy  # type: ignore[attr-defined]
    r.subscribed()
    # remaining length = 2 + 18 (topic) + payload: 1 byte up to 127, 2 up to 16,383, 3 up to 2,097,151, then 4
    sizes = [0, 1, 107, 108, 3, 16_363, 16_364, 70_000, 5, 2_097_131, 2_097_132]
    sent = []
    for i, n in enumerate(sizes * 3):
        body = (b"%d" % i).ljust(n, b" ")[:max(n, 0)] if n else b""
        t = f"plant/s{i % 2}/telemetry"
        publisher.client.publish(t, body, qos=i % 2 if i < len(sizes) * 2 else 0)
        sent.append((t, body))
    burst = [(f"plant/s{i % 3}/telemetry", b"%d" % i) for i in range(5000)]
    infos = [publisher.client.publish(t, b, qos=0) for t, b in burst]
    infos[-1].wait_for_publish(30)
    wait_for(lambda: len(got) >= len(sent) + len(burst), timeout=30, what="every message")
    assert [(t, b) for t, b, _ in got] == sent + burst
    assert not any(retain for _, _, retain in got)
    qos1 = [i for i in range(len(sizes) * 2) if i % 2]
    assert not any(fast[i] for i in qos1) and any(fast[len(sent):])  # QoS 1 by paho; a burst mostly from the buffer
    before = len(got)
    for i in range(5):  # a slow sensor: one message per read, each the first (and only) packet of its read
        publisher.client.publish("plant/slow/telemetry", b"%d" % i, qos=0).wait_for_publish(5)
        wait_for(lambda: len(got) == before + i + 1, timeout=10, what=f"slow message {i}")
    assert [b for _, b, _ in got[before:]] == [b"%d" % i for i in range(5)]
    assert all(fast[before:]), fast[before:]  # decoded from the buffer too, not by paho
    c = src.counters
    assert c.get("source.messages") == len(got) and c.get("source.bytes") == sum(len(b) for _, b, _ in got)
    assert c.get("reject.payload_too_large") == sum(1 for _, b in sent if len(b) > MAX_PAYLOAD_BYTES)
    assert c.get("source.callback_errors") == 0 and src.state == CONNECTED
    r.finish()


def test_retained_messages_are_old_readings_and_skipped(live_broker: Broker, publisher: Publisher,
                                                        runners: list[Runner]) -> None:
    publisher.pub("plant/old/telemetry", "1", retain=True)
    try:
        r = start(runners, live_broker.port)
        r.subscribed()
        c = r.source.counters
        wait_for(lambda: c.get("source.retained") == 1, what="the retained message")
        publisher.pub("plant/new/telemetry", "2")
        wait_for(lambda: r.readings, what="a live reading")
        assert [x.sensor for x in r.readings] == ["new"]
        r.finish()
    finally:
        publisher.pub("plant/old/telemetry", b"", retain=True)  # clear it for later tests


def _sink_raising_on(call: int, into: list[Reading]) -> Any:
    """A sink with a bug: its ``call``-th call raises, every other call keeps the reading in ``into``."""
    calls = {"n": 0}

    def sink(x: Reading) -> None:
        calls["n"] += 1
        if calls["n"] == call:
            raise RuntimeError("sink bug")
        into.append(x)

    return sink


def test_a_raising_sink_is_counted_and_data_keeps_flowing(live_broker: Broker, publisher: Publisher,
                                                          runners: list[Runner]) -> None:
    readings: list[Reading] = []
    r = start(runners, live_broker.port, sink=_sink_raising_on(1, readings))
    r.subscribed()
    publisher.pub("plant/a/telemetry", "1")
    publisher.pub("plant/a/telemetry", "2")
    wait_for(lambda: readings, what="the second reading")
    assert readings[0].values == {"value": 2.0}
    assert r.source.counters.get("source.callback_errors") == 1
    r.finish()


def test_a_raising_sink_loses_one_row_of_a_block_payload_not_the_rest(live_broker: Broker, publisher: Publisher,
                                                                       runners: list[Runner]) -> None:
    """Without block hand-over (``blocks=False``: one Reading per call) a block payload is fed row by row; a sink
    that raises on one row loses that row only (counted), the rows after it still arrive."""
    readings: list[Reading] = []
    r = start(runners, live_broker.port, sink=_sink_raising_on(2, readings), blocks=False)
    r.subscribed()
    publisher.pub("plant/a/telemetry", '{"ts": 1732960000.0, "period_s": 0.5, "values": {"x": [1, 2, 3, 4]}}')
    wait_for(lambda: len(readings) == 3, what="the three rows the sink took")
    assert [x.values["x"] for x in readings] == [1.0, 3.0, 4.0]
    assert [x.ts for x in readings] == [1732960000.0, 1732960001.0, 1732960001.5]
    assert r.source.counters.get("source.callback_errors") == 1
    r.finish()


# -- broker, lifecycle ------------------------------------------------------------------------------------------


def test_broker_restart_resubscribes_without_restarting_the_source(
    live_broker: Broker, runners: list[Runner], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.sources.mqtt")
    r = start(runners, live_broker.port, qos=1)
    assert r.source.state in (CONNECTING, CONNECTED)
    r.subscribed()
    p = Publisher(live_broker.port)
    p.pub("plant/before/telemetry", "1")
    p.close()
    wait_for(lambda: len(r.readings) == 1, what="the reading before the outage")

    live_broker.stop()
    wait_for(lambda: r.source.state == DISCONNECTED, timeout=20, what="DISCONNECTED")
    c = r.source.counters
    wait_for(lambda: c.get("source.connect_failures") >= 2, timeout=20, what="two failed reconnects")
    live_broker.start()
    wait_for(lambda: r.source.state == CONNECTED and r.source.subscribed.is_set(), timeout=30,
             what="CONNECTED and subscribed again")

    p = Publisher(live_broker.port)
    try:
        p.pub("plant/after/telemetry", "2")
        wait_for(lambda: len(r.readings) == 2, what="the reading after the restart")
    finally:
        p.close()
    assert [x.sensor for x in r.readings] == ["before", "after"]
    assert c.get("source.connects") == 2 and c.get("source.reconnects") == 1 and c.get("source.disconnects") == 1
    warnings = [m for m in caplog.messages if "no readings until it answers" in m]
    assert len(warnings) == 1, warnings  # once per outage, not once per retry
    assert any("answers again" in m for m in caplog.messages)
    r.finish()


def test_close_unblocks_run_promptly_when_connected(live_broker: Broker, runners: list[Runner]) -> None:
    r = start(runners, live_broker.port)
    r.subscribed()
    assert r.finish() < 2.0


def test_close_unblocks_run_promptly_while_the_broker_is_down(runners: list[Runner]) -> None:
    r = start(runners, free_port())  # nothing listens there
    wait_for(lambda: r.source.state == DISCONNECTED, what="DISCONNECTED")
    time.sleep(1.2)  # now inside paho's reconnect backoff
    assert r.finish() < 2.0


def test_close_unblocks_run_promptly_during_a_hanging_connect(runners: list[Runner]) -> None:
    # A listener whose accept queue is full drops further SYNs: paho's TCP connect hangs (up to its 5 s timeout).
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(0)
        port = srv.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            r = start(runners, port, topics=["a"], sensor_pattern="")
            time.sleep(0.5)
            assert r.source.state == CONNECTING  # still inside the connect
            assert r.finish() < 4.0


def test_close_before_run_and_stop_event(live_broker: Broker) -> None:
    up = MqttSettings(host="127.0.0.1", port=live_broker.port)
    source = MqttSource(MqttSourceSettings(topics=["a"]), up, Counters())
    source.close()
    t0 = time.monotonic()
    source.run(lambda _: None, threading.Event())
    assert time.monotonic() - t0 < 1 and source.state == FINISHED
    # the stop event ends run() too
    source2 = MqttSource(MqttSourceSettings(topics=["a"]), up, Counters())
    runner = Runner(source2)
    runner.subscribed()
    t0 = time.monotonic()
    runner.stop.set()
    runner.thread.join(5)
    assert not runner.thread.is_alive() and runner.returned and time.monotonic() - t0 < 2
    assert source2.state == FINISHED


def test_sensor_broker_with_its_own_address_and_credentials(tmp_path: Path, runners: list[Runner]) -> None:
    if shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto_passwd not found: install it with `sudo apt-get install -y mosquitto`")
    pwfile = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "sensor", "s3cret"], check=True, capture_output=True)
    os.chmod(pwfile, 0o600)
    # mosquitto started by root drops to user mosquitto, which cannot read the test's private tmp dir
    secured = Broker(tmp_path, extra_conf=f"password_file {pwfile}\nuser {getpass.getuser()}\n")
    secured.conf.write_text(secured.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    secured.start()
    try:
        (tmp_path / "sensor-pw").write_text("s3cret\n")
        upstream_port = free_port()  # the upstream broker is elsewhere (and down): the sensor broker is used
        r = start(runners, secured.port, upstream_port=upstream_port, broker_host="127.0.0.1",
                  broker_port=secured.port, broker_username="sensor", broker_password_file=tmp_path / "sensor-pw")
        assert r.source.name.endswith(f"@127.0.0.1:{secured.port}")
        r.subscribed()
        p = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-secured-pub")
        p.username_pw_set("sensor", "s3cret")
        p.connect("127.0.0.1", secured.port)
        p.loop_start()
        try:
            p.publish("plant/x/telemetry", "1", qos=1).wait_for_publish(10)
            wait_for(lambda: r.readings, what="a reading from the secured broker")
        finally:
            p.disconnect()
            p.loop_stop()
        r.finish()

        # a wrong password: refused, DISCONNECTED, said once
        (tmp_path / "bad-pw").write_text("wrong")
        bad = start(runners, secured.port, broker_username="sensor", broker_password_file=tmp_path / "bad-pw")
        wait_for(lambda: bad.source.state == DISCONNECTED and bad.source.last_error, what="refused")
        assert "refused the connection: Not authorized" in (bad.source.last_error or ""), bad.source.last_error
        bad.finish()
    finally:
        secured.stop()


# -- the whole agent --------------------------------------------------------------------------------------------


class AgentProcess:
    """``python -m agent run`` with its stderr read as it comes (to know when the source is subscribed)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        self.err: list[str] = []
        self.out: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream: Any, into: list[str]) -> None:
        into.extend(stream)  # line by line, as the agent writes them

    def stderr(self) -> str:
        return "".join(self.err)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(5)
        return rc


def _alert_key(a: dict[str, Any]) -> tuple[str, str]:
    return (a["window_end"], a["state"])


def test_agent_fed_over_mqtt_alerts_like_the_replay(tmp_path: Path, live_broker: Broker, recorder: Any,
                                                   publisher: Publisher) -> None:
    samples = "400"
    # 1. the reference: the replay source on the bundled recording
    rec_replay = recorder("edge/test-gw/#")
    r = run_agent(agent_env(tmp_path / "replay", live_broker.port, EDGE_AGENT_CALIBRATION__SAMPLES=samples))
    assert r.returncode == 0, r.stderr
    wait_for(lambda: rec_replay.on("status") and rec_replay.on("status")[-1]["state"] == "offline", what="replay done")
    replay_alerts = sorted(rec_replay.on("alerts"), key=lambda a: a["seq"])
    assert {a["state"] for a in replay_alerts} == {"raised", "cleared"}

    # 2. the same recording published over MQTT, one JSON object per reading
    rec = recorder("edge/test-gw/#")
    agent = AgentProcess(agent_env(
        tmp_path / "mqtt", live_broker.port,
        EDGE_AGENT_SOURCE__KIND="mqtt", EDGE_AGENT_SOURCE__TOPICS="plant/+/telemetry",
        EDGE_AGENT_SOURCE__SENSOR_PATTERN=PATTERN, EDGE_AGENT_CALIBRATION__SAMPLES=samples,
        EDGE_AGENT_SOURCE__QOS="1",
    ))
    try:
        wait_for(lambda: "subscribed to plant/+/telemetry" in agent.stderr() or agent.proc.poll() is not None,
                 timeout=30, what="the agent's subscription")
        assert agent.proc.poll() is None, agent.stderr()
        readings = list(read_recording(demo_recording_path(), Counters()))
        for i, reading in enumerate(readings):
            body = json.dumps({"ts": reading.ts, **reading.values}, separators=(",", ":"))
            info = publisher.client.publish("plant/pump-1/telemetry", body, qos=1)
            if i % 50 == 49:  # bounded bursts: never far ahead of the agent
                info.wait_for_publish(10)
        info.wait_for_publish(10)
        wait_for(lambda: len(rec.on("alerts")) >= len(replay_alerts), timeout=60, what="the alerts")
        time.sleep(1.0)  # the last readings after the last alert reach the pipeline before the shutdown
    finally:
        rc = agent.stop()
    err = agent.stderr()
    assert rc == 0, err
    assert "source mqtt:plant/+/telemetry@127.0.0.1" in err
    wait_for(lambda: rec.on("status") and rec.on("status")[-1]["state"] == "offline", what="mqtt agent offline")

    alerts = sorted(rec.on("alerts"), key=lambda a: a["seq"])
    assert [_alert_key(a) for a in alerts] == [_alert_key(a) for a in replay_alerts]
    assert {a["sensor"] for a in alerts} == {"pump-1"}
    assert [a["score"] for a in alerts] == pytest.approx([a["score"] for a in replay_alerts])
    summaries = rec.on("summary")
    assert summaries and summaries[-1]["final"] is True
    assert sum(s["readings"] for s in summaries) == len(readings)  # every reading arrived, none dropped
    assert _rejected(summaries) == _rejected(rec_replay.on("summary"))  # the same cleaning on the same data


def _rejected(summaries: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for s in summaries:
        for reason, n in s["rejected"].items():
            total[reason] = total.get(reason, 0) + n
    return total


def test_payloads_without_timestamps_published_in_bursts_are_all_accepted(
    tmp_path: Path, live_broker: Broker, recorder: Any, publisher: Publisher,
) -> None:
    """Issue 13: payloads received together shared one receipt time and were refused as duplicate_ts."""
    rec = recorder("edge/test-gw/#")
    agent = AgentProcess(agent_env(
        tmp_path / "mqtt", live_broker.port, EDGE_AGENT_SOURCE__KIND="mqtt",
        EDGE_AGENT_SOURCE__TOPICS="plant/+/telemetry", EDGE_AGENT_SOURCE__SENSOR_PATTERN=PATTERN,
        EDGE_AGENT_SOURCE__QOS="1", EDGE_AGENT_STATS_INTERVAL_S="1",
    ))
    readings = list(read_recording(demo_recording_path(), Counters()))
    try:
        wait_for(lambda: "subscribed to plant/+/telemetry" in agent.stderr() or agent.proc.poll() is not None,
                 timeout=30, what="the agent's subscription")
        assert agent.proc.poll() is None, agent.stderr()
        for i in range(0, len(readings), 50):
            infos = [publisher.client.publish("plant/pump-1/telemetry", json.dumps(dict(r.values)), qos=1)
                     for r in readings[i:i + 50]]  # a burst of 50, no "ts": stamped on receipt
            for info in infos:
                info.wait_for_publish(10)
        wait_for(lambda: any(s["readings_in"] >= len(readings) for s in rec.on("stats")), timeout=60,
                 what="every payload received")
    finally:
        rc = agent.stop()
    assert rc == 0, agent.stderr()
    wait_for(lambda: rec.on("summary") and rec.on("summary")[-1]["final"], what="the final summary")
    summaries = rec.on("summary")
    assert _rejected(summaries) == {}
    assert sum(s["readings"] for s in summaries) == len(readings) == 1145  # every row of the recording


def _run_published(tmp_path: Path, port: int, recorder: Any, publisher: Publisher, bodies: list[str],
                   expected: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """An agent fed ``bodies`` on one topic; its alerts, summaries and last stats once ``expected`` readings are in."""
    rec = recorder("edge/test-gw/#")
    agent = AgentProcess(agent_env(
        tmp_path, port, EDGE_AGENT_SOURCE__KIND="mqtt", EDGE_AGENT_SOURCE__TOPICS="plant/+/telemetry",
        EDGE_AGENT_SOURCE__SENSOR_PATTERN=PATTERN, EDGE_AGENT_SOURCE__QOS="1", EDGE_AGENT_CALIBRATION__SAMPLES="400",
        EDGE_AGENT_STATS_INTERVAL_S="1",
    ))
    try:
        wait_for(lambda: "subscribed to plant/+/telemetry" in agent.stderr() or agent.proc.poll() is not None,
                 timeout=30, what="the agent's subscription")
        assert agent.proc.poll() is None, agent.stderr()
        for i, body in enumerate(bodies):
            info = publisher.client.publish("plant/pump-1/telemetry", body, qos=1)
            if i % 50 == 49:  # bounded bursts: never far ahead of the agent
                info.wait_for_publish(10)
        info.wait_for_publish(10)
        wait_for(lambda: any(s["readings_in"] >= expected and s["queue"]["depth"] == 0 for s in rec.on("stats")),
                 timeout=60, what=f"{expected} readings in")
    finally:
        rc = agent.stop()
    assert rc == 0, agent.stderr()
    wait_for(lambda: rec.on("summary") and rec.on("summary")[-1]["final"], what="the final summary")
    return sorted(rec.on("alerts"), key=lambda a: a["seq"]), rec.on("summary"), rec.on("stats")


def test_block_payloads_reach_the_pipeline_as_their_readings_and_alert_like_single_ones(
    tmp_path: Path, live_broker: Broker, recorder: Any, publisher: Publisher,
) -> None:
    """The bundled recording's 8 channels, one sample a second, published once as one JSON object per reading and
    once as blocks of 50 samples (one timestamp, period_s, an array per channel): the same readings reach the
    pipeline, with the same alerts."""
    channels = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
                "Voltage", "Volume Flow RateRMS"]
    rows = [[float(r.values[c]) for c in channels] for r in read_recording(demo_recording_path(), Counters())]
    t0 = 1_732_960_000.0
    singles = [json.dumps({"ts": t0 + i, **dict(zip(channels, row))}) for i, row in enumerate(rows)]
    blocks = [json.dumps({"ts": t0 + i, "period_s": 1.0,
                          "values": {c: [row[j] for row in rows[i:i + 50]] for j, c in enumerate(channels)}})
              for i in range(0, len(rows), 50)]
    assert len(blocks) == 23
    one_alerts, one_sums, _ = _run_published(tmp_path / "singles", live_broker.port, recorder, publisher, singles,
                                             len(rows))
    blk_alerts, blk_sums, blk_stats = _run_published(tmp_path / "blocks", live_broker.port, recorder, publisher,
                                                     blocks, len(rows))
    assert blk_stats[-1]["readings_in"] == len(rows) and blk_stats[-1]["rejected"] == {}
    assert sum(s["readings"] for s in blk_sums) == sum(s["readings"] for s in one_sums) == len(rows)
    assert _rejected(blk_sums) == _rejected(one_sums) == {}
    assert {a["state"] for a in one_alerts} == {"raised", "cleared"}
    assert [_alert_key(a) for a in blk_alerts] == [_alert_key(a) for a in one_alerts]
    assert [a["score"] for a in blk_alerts] == pytest.approx([a["score"] for a in one_alerts])


def test_queue_drops_make_the_status_degraded_falling_behind_until_they_stop(
    tmp_path: Path, live_broker: Broker, recorder: Any, publisher: Publisher,
) -> None:
    """A flood into a 10-reading queue: the live source drops the oldest, the retained status says `falling behind,
    N readings dropped` while it drops, and clears FALLING_BEHIND_QUIET_S after the drops stop."""
    from agent.status import FALLING_BEHIND_QUIET_S

    rec = recorder("edge/test-gw/#")
    agent = AgentProcess(agent_env(
        tmp_path, live_broker.port, EDGE_AGENT_SOURCE__KIND="mqtt", EDGE_AGENT_SOURCE__TOPICS="plant/+/telemetry",
        EDGE_AGENT_SOURCE__SENSOR_PATTERN=PATTERN, EDGE_AGENT_QUEUE_SIZE="10", EDGE_AGENT_STATS_INTERVAL_S="1",
    ))
    try:
        wait_for(lambda: "subscribed to plant/+/telemetry" in agent.stderr() or agent.proc.poll() is not None,
                 timeout=30, what="the agent's subscription")
        wait_for(lambda: rec.on("status") and rec.on("status")[-1]["state"] == "calibrating", what="status")
        assert "reasons" not in rec.on("status")[-1]
        body = json.dumps({c: 1.0 for c in ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure",
                                             "Temperature", "Thermocouple", "Voltage", "Volume Flow RateRMS"]})
        for _ in range(5):  # bursts at QoS 0, far faster than any pipeline takes them into a 10-reading queue
            infos = [publisher.client.publish("plant/pump-1/telemetry", body, qos=0) for _ in range(4000)]
            infos[-1].wait_for_publish(10)
        # the first status falling behind (a slow start may have shown "no readings arriving" before the flood)
        behind = wait_for(lambda: next((s for s in rec.on("status") if any(r.startswith("falling behind")
                                                                         for r in s.get("reasons", []))), None),
                          timeout=30, what="a degraded status")
        reason = [r for r in behind["reasons"] if r.startswith("falling behind")]
        assert len(reason) == 1 and re.fullmatch(r"falling behind, \d+ readings dropped", reason[0]), behind
        assert int(reason[0].split()[2]) > 0
        stats = wait_for(lambda: next((s for s in reversed(rec.on("stats")) if s["queue"]["dropped"]), None),
                         what="stats with the drops")
        assert stats["state"] == "degraded"
        t_drops = time.monotonic()
        # the drops stop with the flood: the status clears once they stopped for the quiet period
        def cleared() -> Any:
            return next((s for s in rec.since(t_drops, "status")
                         if not any(r.startswith("falling behind") for r in s.get("reasons", []))), None)

        st = wait_for(cleared, timeout=FALLING_BEHIND_QUIET_S + 30, what="the status without 'falling behind'")
        assert st["state"] != "offline", st
        last_behind = [s for s in rec.on("status") if "falling behind" in str(s.get("reasons"))][-1]
        dropped = wait_for(lambda: rec.on("stats")[-1]["queue"]["dropped"], what="stats")
        n = next(int(r.split()[2]) for r in last_behind["reasons"] if r.startswith("falling behind"))
        assert 0 < n <= dropped
    finally:
        rc = agent.stop()
    assert rc == 0, agent.stderr()


def test_assets_on_one_broker_with_other_users_get_their_own_client_ids(tmp_path: Path, live_broker: Broker,
                                                                       publisher: Publisher, runners: list[Runner]) -> None:
    """Two assets on one broker under different user names are two connections (agent.asset_settings.mqtt_broker):
    each needs its own client id, or the broker disconnects the older one each time the other connects and the two
    take turns losing messages. Both connected at once, both deliver."""
    config = tmp_path / "gateway.toml"
    config.write_text("""
[[assets]]
id = "a"
source = { kind = "mqtt", topics = ["a/+"], sensor_pattern = "a/{sensor}", broker_username = "line-a" }
[[assets]]
id = "b"
source = { kind = "mqtt", topics = ["b/+"], sensor_pattern = "b/{sensor}", broker_username = "line-b" }
""")
    settings = load_settings(environ={
        "EDGE_AGENT_CONFIG_FILE": str(config), "EDGE_AGENT_STATE_DIR": str(tmp_path / "state"),
        "EDGE_AGENT_DEVICE_ID": "gw", "EDGE_AGENT_MQTT__HOST": "127.0.0.1", "EDGE_AGENT_MQTT__PORT": str(live_broker.port),
    })
    fa, fb = build_feeds(settings, Counters())
    assert (fa.assets, fb.assets) == (("a",), ("b",))
    assert (fa.source.client_id, fb.source.client_id) == ("edge-agent-gw-src", "edge-agent-gw-src-2")
    ra, rb = Runner(fa.source), Runner(fb.source)
    runners.extend([ra, rb])
    ra.subscribed()
    rb.subscribed()
    for i in range(20):
        publisher.pub("a/s1", str(i))
        publisher.pub("b/s1", str(i))
    def count(r: Runner) -> int:  # readings, some of them coalesced into blocks
        return sum(len(x) if isinstance(x, Block) else 1 for x in list(r.readings))

    wait_for(lambda: count(ra) == 20 and count(rb) == 20, what="20 readings on each connection")
    ra.finish()
    rb.finish()


def test_generic_detector_gathers_a_slow_topics_channel_beside_a_fast_one(
    tmp_path: Path, live_broker: Broker, recorder: Any, publisher: Publisher,
) -> None:
    """Alignment, the generic detector, a bare number per topic stamped on receipt: Current every 0.2 s, Pressure
    every 1.5 s and first 0.7 s after Current. The channels are gathered until Pressure has spoken twice and for
    3 of its periods: both are channels (gathering used to end when Current spoke again, and the channel set
    collapsed to `value`, which both topics then overwrote)."""
    rec = recorder("edge/test-gw/#")
    agent = AgentProcess(agent_env(
        tmp_path, live_broker.port, EDGE_AGENT_SOURCE__KIND="mqtt", EDGE_AGENT_SOURCE__TOPICS="plant/pump1/+",
        EDGE_AGENT_SOURCE__SENSOR_PATTERN="plant/pump1/{sensor}", EDGE_AGENT_SOURCE__QOS="1",
        EDGE_AGENT_MODEL__PATH="generic", EDGE_AGENT_CLEANING__ALIGN_PERIOD_S="0.2",
        EDGE_AGENT_CLEANING__ALIGN_TOLERANCE_S="2", EDGE_AGENT_CLEANING__ALIGN_SENSOR="pump1",
    ))
    try:
        wait_for(lambda: "subscribed to plant/pump1/+" in agent.stderr() or agent.proc.poll() is not None,
                 timeout=30, what="the agent's subscription")
        assert agent.proc.poll() is None, agent.stderr()
        t0 = time.monotonic()
        i = 0
        next_slow = t0 + 0.7
        while time.monotonic() - t0 < 20 and "channels from the first readings" not in agent.stderr():
            publisher.pub("plant/pump1/Current", f"{10 + 0.1 * (i % 5):.2f}")
            if time.monotonic() >= next_slow:
                publisher.pub("plant/pump1/Pressure", f"{3 + 0.05 * (i % 3):.2f}")
                next_slow += 1.5
            i += 1
            time.sleep(0.2)
    finally:
        rc = agent.stop()
    err = agent.stderr()
    assert rc == 0, err
    line = next((ln for ln in err.splitlines() if "channels from the first readings (aligned)" in ln), "")
    assert "aligned): Current, Pressure;" in line, err[-3000:]
    assert "Current (value ×" in line and "Pressure (value ×" in line  # the topics heard
    wait_for(lambda: rec.on("summary") and rec.on("summary")[-1]["final"], what="the final summary")
    assert set(rec.on("summary")[-1]["channels"]) == {"Current", "Pressure"}


@pytest.mark.parametrize("blocks", [True, False])
def test_readings_the_broker_delivered_before_the_unsuback_at_close_reach_the_sink(
        live_broker: Broker, publisher: Publisher, runners: list[Runner], blocks: bool) -> None:
    """close() while the source works through a backlog the broker has already sent (a sink that takes a moment
    per reading): the messages ahead of the UNSUBACK used to be dropped without a count once the UNSUBACK came (the
    pass it came in) or a second had passed (all the rest). They are the broker's deliveries: every one reaches the
    sink."""
    got: list[Any] = []

    def slow_sink(record: Any) -> None:
        got.append(record)
        time.sleep(0.001)

    r = start(runners, live_broker.port, sink=slow_sink, blocks=blocks)
    r.subscribed()
    n = 1200
    for i in range(n):  # QoS 0 (the default): the broker sends each on at once, ahead of any later UNSUBACK
        publisher.client.publish(f"plant/s{i % 3}/telemetry", str(i), qos=0)
    publisher.pub("barrier/not/subscribed", "x", qos=1)  # its PUBACK: the broker has handled every one before it
    wait_for(lambda: got, what="the first reading")
    assert len(got) < n / 2  # the close comes with most of them still to be handed over
    r.finish(timeout=10)
    c = r.source.counters
    readings = [row for x in got for row in (x.rows() if type(x) is Block else (x,))]
    assert sorted(int(x.values["value"]) for x in readings) == list(range(n))
    assert c.get("source.messages") == c.get("source.readings") == n and c.get("source.dropped_at_close") == 0


def test_gathered_channels_keep_their_sensors_across_a_restart(
    tmp_path: Path, live_broker: Broker, recorder: Any, publisher: Publisher,
) -> None:
    """Gathered channels: ``Current`` and ``Pressure`` from one topic's JSON, ``value`` from the bare number of
    ``Flow`` alone. Only Flow fills ``value``, and after a restart too: the sensors of each channel are stored with
    the taught-in channels (they used to be kept in memory only, so a topic first heard after the restart, Temp, a
    bare number too, filled ``value`` again instead of being counted ``reject.not_a_channel``)."""
    rec = recorder("edge/test-gw/#")
    env = agent_env(
        tmp_path, live_broker.port, EDGE_AGENT_SOURCE__KIND="mqtt", EDGE_AGENT_SOURCE__TOPICS="plant/pump1/+",
        EDGE_AGENT_SOURCE__SENSOR_PATTERN="plant/pump1/{sensor}", EDGE_AGENT_SOURCE__QOS="1",
        EDGE_AGENT_MODEL__PATH="generic", EDGE_AGENT_CLEANING__ALIGN_PERIOD_S="0.2",
        EDGE_AGENT_CLEANING__ALIGN_TOLERANCE_S="2", EDGE_AGENT_CLEANING__ALIGN_SENSOR="pump1",
        EDGE_AGENT_CALIBRATION__SAMPLES="30", EDGE_AGENT_STATS_INTERVAL_S="1",
    )

    def play(agent: AgentProcess, until: Callable[[], bool], late: bool = False) -> None:
        wait_for(lambda: "subscribed to plant/pump1/+" in agent.stderr() or agent.proc.poll() is not None,
                 timeout=30, what="the agent's subscription")
        assert agent.proc.poll() is None, agent.stderr()
        t0, i = time.monotonic(), 0
        while time.monotonic() - t0 < 40 and not until():
            publisher.pub("plant/pump1/telemetry", json.dumps({"Current": 10 + 0.1 * (i % 5), "Pressure": 3 + 0.05 * (i % 3)}))
            publisher.pub("plant/pump1/Flow", f"{5 + 0.1 * (i % 4):.2f}")
            if late:
                publisher.pub("plant/pump1/Temp", f"{60 + i % 7}")
            i += 1
            time.sleep(0.1)

    first = AgentProcess(env)
    try:
        play(first, lambda: "teach-in done" in first.stderr())
    finally:
        assert first.stop() == 0, first.stderr()[-3000:]
    line = next((ln for ln in first.stderr().splitlines() if "channels from the first readings (aligned)" in ln), "")
    assert "aligned): Current, Pressure, value;" in line, first.stderr()[-3000:]
    assert "teach-in done" in first.stderr(), first.stderr()[-3000:]

    at_restart = len(rec.on("stats"))
    second = AgentProcess(env)

    def rejected() -> int:
        return max([s.get("rejected", {}).get("not_a_channel", 0) for s in rec.on("stats")[at_restart:]], default=0)

    try:
        play(second, lambda: rejected() >= 10, late=True)
    finally:
        assert second.stop() == 0, second.stderr()[-3000:]
    assert "channels from the first readings" not in second.stderr()  # taken from the stored teach-in
    assert rejected() >= 10, (rec.on("stats")[-1:], second.stderr()[-3000:])
