"""MQTT topic filters, the sensor pattern that names a topic's sensor (``plant/{sensor}/telemetry``), the sensor
client's id."""

from __future__ import annotations

import re
import secrets

from agent.payload import PayloadParser
from agent.settings import MqttSettings, MqttSourceSettings

SENSOR = "{sensor}"
Route = tuple[str, str, PayloadParser, int]  # a topic's sensor id, asset, payload parser and max payload bytes
Filter = tuple[str, str, "re.Pattern[str] | None", PayloadParser, int]  # a filter's asset, sensor pattern, parser, max bytes


def check_filter(topic_filter: str) -> None:
    """Raise ValueError unless ``topic_filter`` is a valid MQTT topic filter."""
    if not topic_filter or "\0" in topic_filter or len(topic_filter.encode()) > 65535:
        raise ValueError(f"invalid topic filter {topic_filter!r}")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"invalid topic filter {topic_filter!r}: '#' must be a whole level and the last one")
        if "+" in level and level != "+":
            raise ValueError(f"invalid topic filter {topic_filter!r}: '+' must be a whole level")


def compile_sensor_pattern(pattern: str) -> re.Pattern[str] | None:
    """A regex for ``pattern`` whose group ``sensor`` is the sensor id; None for an empty pattern (whole topic).

    ``{sensor}`` names one level or part of one (``line-{sensor}``), exactly once; ``+`` matches any one level
    and a final ``#`` any number of levels, as in topic filters; everything else must match literally.
    """
    if not pattern:
        return None
    if pattern.count(SENSOR) != 1:
        raise ValueError(
            f"sensor pattern {pattern!r} must contain {SENSOR} exactly once (e.g. plant/{SENSOR}/telemetry)"
        )
    levels = pattern.split("/")
    rx = ""
    for i, level in enumerate(levels):
        sep = "/" if i else ""
        if level == "#":
            if i != len(levels) - 1:
                raise ValueError(f"sensor pattern {pattern!r}: '#' must be the last level")
            rx += "(?:/.*)?" if i else ".*"  # a/# matches a itself too, as a filter does
        elif level == "+":
            rx += sep + "[^/]*"
        elif "+" in level or "#" in level:
            raise ValueError(f"sensor pattern {pattern!r}: '+' and '#' must be whole levels")
        else:
            rx += sep + "(?P<sensor>[^/]+)".join(re.escape(p) for p in level.split(SENSOR))
    return re.compile(rx)


def compile_routes(routes: list[tuple[str, MqttSourceSettings]]) -> tuple[list[Filter], dict[str, int]]:
    """Each asset's topic filters, in order, with the asset's sensor pattern, payload parser and max_payload_bytes;
    and the QoS to subscribe each filter at: its asset's (the highest when two assets name one filter). ValueError
    for an invalid filter or sensor pattern."""
    filters: list[Filter] = []
    qos: dict[str, int] = {}
    for asset, s in routes:
        pattern = compile_sensor_pattern(s.sensor_pattern)
        parser = PayloadParser(channel=s.channel, timestamp_field=s.timestamp_field, max_block_samples=s.max_block_samples)
        for t in s.topics:
            check_filter(t)
            filters.append((t, asset, pattern, parser, s.max_payload_bytes))
            qos[t] = max(qos.get(t, 0), int(s.qos))
    return filters, qos


def client_id_for(upstream: MqttSettings, device_id: str | None = None) -> str:
    """The sensor client's id: ``{upstream client id}-src``, else ``edge-agent-{device_id}-src``, else random.

    It must differ from the upstream client's id (the broker disconnects the older of two clients with one id).
    """
    if upstream.client_id:
        return f"{upstream.client_id}-src"
    if device_id:
        return f"edge-agent-{device_id}-src"
    return f"edge-agent-src-{secrets.token_hex(4)}"
