"""Checks that span sections of the settings, run by ``load_settings`` after each section validated on its own.

Each returns one line per problem naming the settings involved, like every other configuration error (exit 78).
"""

from __future__ import annotations

from typing import Any

from agent.mqtt_client import source_broker_problems


def consistency_problems(settings: Any) -> list[str]:
    """Inconsistencies between sections: the MQTT source's broker against the upstream one, Modbus references,
    and every ``[[assets]]`` entry merged over the gateway's settings."""
    if settings.assets:
        return asset_problems(settings)
    return source_problems(settings.source, settings)


def source_problems(src: Any, settings: Any) -> list[str]:
    if src.kind == "mqtt":
        return source_broker_problems(src, settings.mqtt)
    if src.kind == "modbus":
        return modbus_source_problems(src, settings.modbus)
    return []


def asset_problems(settings: Any) -> list[str]:
    """The asset list as a whole, then each asset's merged settings and source."""
    from agent.asset_settings import check_assets, effective_settings

    problems = check_assets(settings.assets)
    for i, asset in enumerate(settings.assets):
        try:
            eff = effective_settings(settings, asset)
        except ValueError as e:
            problems.append(f"assets[{i}] ({asset.id}).{e}")
            continue
        problems += [f"assets[{i}] ({asset.id}).{as_key(p)}" for p in source_problems(asset.source, eff)]
    return problems


def as_key(problem: str) -> str:
    """``EDGE_AGENT_DECISION__K=9: …`` → ``decision.k=9: …`` (an asset's keys are in the configuration file)."""
    import re

    return re.sub(r"^EDGE_AGENT_([A-Z0-9_]+?)=", lambda m: m.group(1).lower().replace("__", ".") + "=", problem, count=1)


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
