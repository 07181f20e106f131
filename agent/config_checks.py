"""Checks that span sections of the settings, run by ``load_settings`` after each section validated on its own.

Each returns one line per problem naming the settings involved, like every other configuration error (exit 78).
"""

from __future__ import annotations

from typing import Any

from agent.mqtt_client import source_broker_problems


def consistency_problems(settings: Any) -> list[str]:
    """Inconsistencies between sections: the MQTT source's broker against the upstream one, Modbus references."""
    src = settings.source
    if src.kind == "mqtt":
        return source_broker_problems(src, settings.mqtt)
    if src.kind == "modbus":
        return modbus_source_problems(src, settings.modbus)
    return []


def modbus_source_problems(src: Any, modbus: Any) -> list[str]:
    """The Modbus source names declared devices, and there is at least one to poll."""
    declared = modbus.devices
    if not declared:
        return ["EDGE_AGENT_SOURCE__KIND=modbus: no [modbus.devices.NAME] in the configuration file "
                "(EDGE_AGENT_CONFIG_FILE; docs/modbus.md)"]
    missing = [d for d in src.devices if d not in declared]
    if missing:
        return [f"EDGE_AGENT_SOURCE__DEVICES={','.join(src.devices)!r}: {', '.join(missing)} not declared as "
                f"[modbus.devices.NAME] (declared: {', '.join(declared)})"]
    return []
