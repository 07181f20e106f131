"""The explicit kind -> factory registry, and the channel names each source knows before its data."""

from __future__ import annotations

from agent.counters import Counters
from agent.settings import SOURCE_KINDS, MqttSettings, MqttSourceSettings, ReplaySourceSettings, SerialSourceSettings
from agent.sources import FACTORIES, create_source
from agent.sources.mqtt import MqttSource
from agent.sources.replay import ReplaySource
from agent.sources.serial import SerialSource


def test_every_settings_kind_has_a_factory_and_back() -> None:
    assert set(FACTORIES) == set(SOURCE_KINDS) == {"replay", "serial", "mqtt", "modbus"}


def test_create_source_uses_the_registry() -> None:
    from agent.settings import load_settings

    src = create_source(load_settings(environ={}), Counters())
    assert isinstance(src, ReplaySource)


def test_channels_known_before_the_data() -> None:
    replay = ReplaySource(ReplaySourceSettings(), Counters())
    assert replay.channels is not None and replay.channels[:3] == ["Accelerometer1RMS", "Accelerometer2RMS", "Current"]
    serial = SerialSource(SerialSourceSettings(port="loop://", channels=["ts", "a", "b"]), Counters())
    assert serial.channels == ["a", "b"]  # the timestamp column is no channel
    unknown = SerialSource(SerialSourceSettings(port="loop://"), Counters())
    assert unknown.channels is None  # until a header line comes
    unknown.parser.parse(b"x,y", 0.0)
    assert unknown.channels == ["x", "y"]
    mqtt = MqttSource(MqttSourceSettings(topics=["a/#"]), MqttSettings(), Counters())
    assert mqtt.channels is None
