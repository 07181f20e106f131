"""The MQTT source's topic is a str (paho's on_message) or bytes (BufferedReadClient's fast path for QoS 0): both
route alike, and a topic that is not UTF-8 is counted ``reject.topic_mismatch`` on either path (paho's
``MQTTMessage.topic`` raises UnicodeDecodeError for it). No broker: the callbacks are called as paho would."""

from __future__ import annotations

import paho.mqtt.client as mqtt

from agent.counters import Counters
from agent.records import Reading
from agent.settings import MqttSettings, MqttSourceSettings
from agent.sources.mqtt import MqttSource


def _source() -> tuple[MqttSource, Counters, list[Reading]]:
    counters = Counters()
    src = MqttSource(MqttSourceSettings(topics=["plant/+/telemetry"], sensor_pattern="plant/{sensor}/telemetry"),
                     MqttSettings(), counters, blocks=False)
    got: list[Reading] = []
    src._sink = got.append  # noqa: SLF001 - what run() sets; the source is never started here
    return src, counters, got


def _message(topic: bytes, payload: bytes) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=topic)
    msg.payload = payload
    return msg


def test_a_topic_routes_alike_as_str_and_as_bytes() -> None:
    src, counters, got = _source()
    src._on_message(src.client, None, _message(b"plant/p1/telemetry", b'{"x": 1.5}'))  # noqa: SLF001
    src._on_publish(b"plant/p1/telemetry", b'{"x": 2.5}', False)  # noqa: SLF001 - the fast path's call
    assert [(r.sensor, r.values) for r in got] == [("p1", {"x": 1.5}), ("p1", {"x": 2.5})]
    assert counters.get("source.readings") == 2 and counters.get("reject.topic_mismatch") == 0


def test_a_topic_that_is_not_utf8_is_a_topic_mismatch_on_both_paths() -> None:
    src, counters, got = _source()
    for _ in range(2):  # the second time from the route cache
        src._on_message(src.client, None, _message(b"plant/\xff/telemetry", b'{"x": 1.5}'))  # noqa: SLF001
        src._on_publish(b"plant/\xfe/telemetry", b'{"x": 1.5}', False)  # noqa: SLF001
    assert got == []
    assert counters.get("reject.topic_mismatch") == 4 and counters.get("source.messages") == 4
    assert counters.get("source.callback_errors") == 0
