"""Assets: the machines one gateway watches, each an instance of the pipeline, and the sources that feed them.

Without ``[[assets]]`` the gateway is one machine: one asset with the empty id, the whole configuration, the state
directory itself and today's topics. With assets each has its effective settings (the gateway's, with what the
asset sets laid over them), a state directory ``STATE_DIR/assets/<id>/`` (calibration, overrides), its own
counters (counted into the gateway's too), its own pipeline and its messages under ``asset/<id>/``. A model file
used by several assets is loaded once. An asset whose model is refused is down alone (``failure``: in its status,
its readings counted and dropped); without assets a refused model still stops the start (exit 78).

Sources are shared where a resource has one owner: every ``modbus`` asset is read by one Modbus source (one thread
per bus), every ``mqtt`` asset on one broker by one client; a replay file or a serial port belongs to one asset.
Each reading carries the id of the asset it feeds (``Reading.asset``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from agent.advice import Advisor, parse_adjustable
from agent.arrivals import Arrivals
from agent.bundled import default_model_path
from agent.clean import CleaningPolicy
from agent.counters import Counters
from agent.decide import AlertPolicy, Decisions
from agent.detectors import open_model, resolve
from agent.evidence import EvidenceStore
from agent.infer import ModelError
from agent.messages import Messages
from agent.pipeline import Pipeline
from agent.records import Block, Reading
from agent.settings import Settings
from agent.sources import Sink, Source, create_source

log = logging.getLogger(__name__)


class ModelCache:
    """Loads each model file once (same path, runtime and threads), for every asset that runs it. The pipelines
    share the object: they all run on the pipeline thread, one window at a time."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str, int], Any] = {}

    def open(self, settings: Settings) -> Any:
        path = resolve(settings.model.path) if settings.model.path else default_model_path()
        key = (str(Path(path).resolve()), settings.model.runtime, settings.model.num_threads)
        if key not in self._models:
            self._models[key] = open_model(path, runtime=settings.model.runtime, num_threads=settings.model.num_threads)
        return self._models[key]


def load_model(settings: Settings) -> Any:
    """The configured model (a bundled name or a path; default: the bundled default), checked; raises ModelError."""
    return ModelCache().open(settings)


def build_pipeline(
    settings: Settings, model: Any, counters: Counters, evidence: EvidenceStore | None = None,
    state_dir: Path | None = None, channels: list[str] | None = None, asset: str = "",
) -> Pipeline:
    """The pipeline as the settings describe it (the daemon's per asset, and ``evaluate``'s)."""
    a, adv = settings.alerts, settings.advice
    advisor = Advisor(settings.device_id, counters, enabled=adv.enabled, rate_limit_per_hour=adv.rate_limit_per_hour,
                      adjustable=parse_adjustable(adv.adjustable))
    problems = advisor.check(model.sidecar)
    if problems:
        raise ValueError("EDGE_AGENT_ADVICE__ADJUSTABLE: " + "; ".join(problems))
    cleaning = CleaningPolicy.from_settings(settings.cleaning)
    if settings.source.kind == "replay":  # a recording carries its own time: a jump in it is a gap, not a bad clock
        import dataclasses

        cleaning = dataclasses.replace(cleaning, max_time_jump_s=0.0)
    d = settings.decision
    decisions = Decisions(counters, AlertPolicy(a.cooldown_s, a.rate_limit_per_hour), threshold=settings.model.threshold,
                          k=d.k, n=d.n, clear_ratio=d.clear_ratio, recede_ratio=d.recede_ratio)
    return Pipeline(
        model, counters, state_dir or settings.state_dir, asset=asset, summary_interval_s=settings.summary_interval_s,
        calibration_samples=settings.calibration.samples, calibration_duration_s=settings.calibration.duration,
        calibration_clock=settings.calibration.timezone,
        channels=channels, decisions=decisions, evidence=evidence, evidence_windows_before=a.evidence_windows_before,
        evidence_inline_max_bytes=a.evidence_inline_max_bytes, cleaning=cleaning, advisor=advisor,
        live=settings.source.kind != "replay",
    )


@dataclass
class Asset:
    """One machine: its settings, pipeline (None while down) and where its state lives."""

    id: str  # "" without [[assets]]
    settings: Settings  # effective: the gateway's with this asset's keys laid over them
    state_dir: Path
    counters: Counters
    messages: Messages
    pipeline: Pipeline | None = None
    failure: str | None = None  # why it is down (its model refused)
    sensors: set[str] = field(default_factory=set)  # Modbus devices' sensor ids that feed it (its problems)
    arrivals: Arrivals | None = None  # fed by a live source: whether readings arrive at all (agent.arrivals)

    @property
    def overrides_path(self) -> Path:
        return self.state_dir / "overrides.json"

    @property
    def label(self) -> str:
        return self.id or self.settings.device_id


def build_assets(settings: Settings, counters: Counters, evidence: EvidenceStore, models: ModelCache,
                 channels_of: Callable[[str], list[str] | None]) -> list[Asset]:
    """Every asset of the configuration with its pipeline (``channels_of(asset id)``: what its source knows)."""
    if not settings.assets:
        model = models.open(settings)  # ModelError: exit 78 as before
        pipe = build_pipeline(settings, model, counters, evidence, channels=channels_of(""))
        return [Asset("", settings, settings.state_dir, counters, Messages(settings.device_id, settings.alerts.critical_margin), pipe)]
    from agent.asset_settings import effective_settings

    out = []
    for spec in settings.assets:
        eff = effective_settings(settings, spec)
        state = settings.state_dir / "assets" / spec.id
        state.mkdir(parents=True, exist_ok=True)
        asset = Asset(spec.id, eff, state, Counters(counters), Messages(settings.device_id, eff.alerts.critical_margin))
        if spec.source.kind == "modbus":
            asset.sensors = {settings.modbus.devices[d].sensor or d for d in spec.source.devices}
        try:
            asset.pipeline = build_pipeline(eff, models.open(eff), asset.counters, evidence, state_dir=state,
                                            channels=channels_of(spec.id), asset=spec.id)
        except (ModelError, ValueError) as e:
            asset.failure = f"model refused: {e}"
            log.error("asset %s is down (the others run): %s", spec.id, e)
        out.append(asset)
    return out


# -- sources -----------------------------------------------------------------------------------------------------


Tag = Callable[[Reading | Block], Reading | Block]  # a record with its asset set


@dataclass
class Feed:
    """A source and how its readings find their asset (``tag``: None when they carry it already)."""

    source: Source
    tag: Tag | None = None
    assets: tuple[str, ...] = ("",)  # the assets it feeds

    def sink(self, sink: Sink) -> Sink:
        if self.tag is None:
            return sink
        tag = self.tag
        return lambda r: sink(tag(r))


def _tag(asset: str) -> Tag:
    def tag(r: Reading | Block) -> Reading | Block:
        if type(r) is Block:
            return Block(r.ts, r.channels, r.values, r.sensor, asset)
        return Reading(r.ts, r.values, r.sensor, asset)

    return tag


def _tag_by_sensor(owner: dict[str, str]) -> Tag:
    """The asset that owns the record's device, by its sensor ("" for none): the shared Modbus source's readings."""
    def tag(r: Reading | Block) -> Reading | Block:
        if type(r) is Block:  # the Modbus source hands over Readings only; a Block would stay whole all the same
            return Block(r.ts, r.channels, r.values, r.sensor, owner.get(r.sensor, ""))
        return Reading(r.ts, r.values, r.sensor, owner.get(r.sensor, ""))

    return tag


def build_feeds(settings: Settings, counters: Counters) -> list[Feed]:
    """The sources of the configuration: one without assets; with assets, shared where a resource has one owner."""
    if not settings.assets:
        return [Feed(create_source(settings, counters))]
    from agent.asset_settings import effective_settings, mqtt_broker

    feeds: list[Feed] = []
    mqtt_groups: dict[tuple[Any, ...], list[tuple[str, Settings]]] = {}
    modbus: list[tuple[str, Settings]] = []
    for spec in settings.assets:
        eff = effective_settings(settings, spec)
        kind = spec.source.kind
        if kind == "mqtt":
            mqtt_groups.setdefault(mqtt_broker(spec.source), []).append((spec.id, eff))
        elif kind == "modbus":
            modbus.append((spec.id, eff))
        else:
            feeds.append(Feed(create_source(eff, counters), _tag(spec.id), (spec.id,)))
    for i, group in enumerate(mqtt_groups.values()):  # one client per connection (broker, user, TLS), each its
        from agent.sources.mqtt import MqttSource  # own client id: a broker disconnects the older of two with one

        first = group[0][1]  # its connection settings are every one's (agent.asset_settings.MQTT_CONNECTION_KEYS)
        routes = [(aid, eff.source) for aid, eff in group]  # each asset's topics, qos, max_payload_bytes, format
        src = MqttSource(first.source, first.mqtt, counters, device_id=first.device_id, routes=routes,  # type: ignore[arg-type]
                         client_suffix=f"-{i + 1}" if i else "")
        feeds.append(Feed(src, None, tuple(aid for aid, _ in group)))
    if modbus:
        from agent.settings_sections import ModbusSourceSettings
        from agent.sources.modbus import ModbusSource

        devices = [d for _, eff in modbus for d in eff.source.devices]  # type: ignore[union-attr]
        bus = ModbusSource(ModbusSourceSettings(devices=devices), settings.modbus, counters)
        owner: dict[str, str] = {}
        for aid, eff in modbus:
            for d in eff.source.devices:  # type: ignore[union-attr]
                owner[settings.modbus.devices[d].sensor or d] = aid
        feeds.append(Feed(bus, _tag_by_sensor(owner), tuple(aid for aid, _ in modbus)))
    return feeds


def source_channels(feeds: list[Feed], settings: Settings) -> Callable[[str], list[str] | None]:
    """What each asset's source knows of its channels (a header, a register map), for a detector that learns them."""
    def channels_of(asset: str) -> list[str] | None:
        for f in feeds:
            if asset in f.assets:
                if asset and settings.assets and f.source.__class__.__name__ == "ModbusSource":
                    return _modbus_channels(settings, asset)
                return f.source.channels
        return None

    return channels_of


def _modbus_channels(settings: Settings, asset: str) -> list[str] | None:
    spec = next(a for a in settings.assets if a.id == asset)
    names = [c for d in spec.source.devices for c in settings.modbus.devices[d].channels]  # type: ignore[union-attr]
    return list(dict.fromkeys(names)) or None
