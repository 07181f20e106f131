"""``[[assets]]``: several machines on one gateway, in the configuration file only.

Each asset names its id, where its readings come from (a ``source`` table: a replay file, a serial port, MQTT
topics, or devices declared under ``[modbus.devices]``) and whatever differs from the gateway-level settings, which
are its defaults: ``model``, ``calibration``, ``decision``, ``cleaning``, ``alerts``, ``advice`` and
``summary_interval_s``. Only the keys an asset sets override the gateway's (as Frigate's cameras do with its
global sections); the merged section is validated again (k <= n and the like).

    [[assets]]
    id = "pump-1"
    source = { kind = "modbus", devices = ["pump1-meter"] }
    calibration = { duration = "24h" }

    [[assets]]
    id = "compressor"
    source = { kind = "mqtt", topics = ["plant/compressor/#"] }
    model = { path = "generic" }
    decision = { k = 4, n = 6 }
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.settings_sections import (
    AdviceSettings, AlertSettings, CalibrationSettings, CleaningSettings, DecisionSettings, ModelSettings,
    SourceSettings,
)

if TYPE_CHECKING:
    from agent.settings import Settings

OVERRIDABLE = ("model", "calibration", "decision", "cleaning", "alerts", "advice")
# An mqtt source's keys that belong to its connection: the assets on one broker share one client (agent.assets), so
# they must agree on these; topics, sensor_pattern, payload format, qos and max_payload_bytes stay each asset's own.
MQTT_CONNECTION_KEYS = ("gather_ms", "broker_ca_file", "broker_cert_file", "broker_key_file", "broker_tls_insecure")
ASSET_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # a topic level, a directory name, a log word


class AssetSettings(BaseModel):
    """One machine watched by this gateway (``[[assets]]`` in the configuration file)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=ASSET_ID, description="The asset's id: in its topics (asset/<id>/alerts), messages, commands and state directory.")
    source: SourceSettings = Field(description="Where its readings come from: a table with kind = replay, serial, mqtt or modbus and that kind's keys (as [source]).")
    summary_interval_s: float | None = Field(None, gt=0, allow_inf_nan=False, description="Seconds of data time between its summaries; empty = the gateway's.")
    model: ModelSettings = Field(default_factory=ModelSettings, description="Overrides of [model] for this asset.")
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings, description="Overrides of [calibration].")
    decision: DecisionSettings = Field(default_factory=DecisionSettings, description="Overrides of [decision].")
    cleaning: CleaningSettings = Field(default_factory=CleaningSettings, description="Overrides of [cleaning].")
    alerts: AlertSettings = Field(default_factory=AlertSettings, description="Overrides of [alerts].")
    advice: AdviceSettings = Field(default_factory=AdviceSettings, description="Overrides of [advice].")


def check_assets(assets: list[AssetSettings]) -> list[str]:
    """Problems of the asset list as a whole (each asset alone is validated by its model)."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    ports: dict[str, str] = {}
    devices: dict[str, str] = {}
    brokers: dict[tuple[Any, ...], AssetSettings] = {}
    for i, a in enumerate(assets):
        if a.id in seen:
            problems.append(f"assets[{i}].id = {a.id!r}: also the id of assets[{seen[a.id]}] (ids must be unique)")
        seen.setdefault(a.id, i)
        src = a.source
        if src.kind == "serial":
            if src.port in ports:
                problems.append(f"assets[{i}].source.port = {src.port!r}: also the port of asset {ports[src.port]!r} "
                                "(one owner per serial port: put both machines' devices on one asset or a Modbus bus)")
            ports.setdefault(src.port, a.id)
        if src.kind == "modbus":
            if not src.devices:
                problems.append(f"assets[{i}].source.devices: name the [modbus.devices.NAME] of this asset")
            for d in src.devices:
                if d in devices:
                    problems.append(f"assets[{i}].source.devices: {d!r} is already read by asset {devices[d]!r}")
                devices.setdefault(d, a.id)
        if src.kind == "mqtt":
            first = brokers.setdefault(mqtt_broker(src), a)
            for key in MQTT_CONNECTION_KEYS:
                mine, theirs = getattr(src, key), getattr(first.source, key)
                if mine != theirs:
                    problems.append(
                        f"assets[{i}].source.{key} = {_shown(mine)}: asset {first.id!r} on the same sensor broker has "
                        f"{_shown(theirs)} (the mqtt assets on one broker share one client: their "
                        f"{', '.join(MQTT_CONNECTION_KEYS)} must be the same)")
    return problems


def mqtt_broker(src: Any) -> tuple[Any, ...]:
    """What names an mqtt source's broker connection: the assets with the same one share one client."""
    return (src.broker_host, src.broker_port, src.broker_username, src.broker_password_file, src.broker_tls)


def _shown(value: Any) -> str:
    return "(not set)" if value is None else str(value)


def effective_settings(settings: "Settings", asset: AssetSettings) -> "Settings":
    """The gateway's settings with what ``asset`` sets laid over them, each merged section validated again.
    ValueError naming the key when the merge is invalid (k > n once both are known, for instance)."""
    update: dict[str, Any] = {"source": asset.source}
    if asset.summary_interval_s is not None:
        update["summary_interval_s"] = asset.summary_interval_s
    for name in OVERRIDABLE:
        mine = getattr(asset, name)
        if not mine.model_fields_set:
            continue
        base = getattr(settings, name)
        merged = {**base.model_dump(), **{k: getattr(mine, k) for k in mine.model_fields_set}}
        try:
            update[name] = type(base).model_validate(merged)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"{name}{'.' + where if where else ''}: {err['msg']}") from None
    return settings.model_copy(update=update)
