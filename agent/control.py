"""Commands from the control room: ``{prefix}/{device_id}/cmd/<name>`` in, ``…/reply/<name>`` out.

A command is JSON with a ``request_id``; the reply carries the same ``request_id``, ``ok`` and, when not ok, a
``reason``. An unknown, switched-off or malformed command gets a not-ok reply and changes nothing; a command that
asks for what is already in force changes nothing either (``changed: false``). With ``[[assets]]`` the commands
that act on a machine (``set-threshold``, ``calibrate``, ``reload-model``, ``feedback``) name it: ``"asset": "<id>"``
(optional when there is only one). Runs on the pipeline thread (between two readings): no locks, and a model swap
never drops a reading. ``agent.command_gate`` sits in front of it on paho's thread.

Threat model (README, Security): whoever may publish to ``cmd/`` can change thresholds, restart teach-in and load
models from the allowed directories. The broker's ACL decides who that is (``deploy/mosquitto/``); the agent
bounds what a command can do: allow-list, rate, size, value ranges, model directories, and no command that
changes nothing can reset the alert debounce.

Control receives narrow interfaces: the assets (their pipelines and settings), the evidence store, the counters,
the command settings and a ``Gateway`` (state, status publication); it never sees the agent itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from agent.assets import Asset
from agent.bundled import bundled_dir, default_model_path
from agent.command_gate import CommandError, TooLarge, _finite, _no_constant, parse_command, request_id_of
from agent.counters import Counters
from agent.detectors import open_model, resolve
from agent.evidence import LABELS, EvidenceStore
from agent.files import atomic_write, set_aside
from agent.infer import ModelError
from agent.logsafe import clip, working_on
from agent.parse import iso
from agent.settings import COMMAND_NAMES, CommandSettings, Settings

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """What commands may ask of the running agent beside its assets."""

    device_id: str
    state: Callable[[], str]
    asset_state: Callable[[Asset], str]
    publish_status_and_stats: Callable[[], None]
    status_changed: Callable[[], None]


class Control:
    """Carries out commands against the assets (on the pipeline thread)."""

    def __init__(self, assets: list[Asset], evidence: EvidenceStore, counters: Counters, settings: CommandSettings,
                 gateway: Gateway):
        self.assets = {a.id: a for a in assets}
        self.evidence = evidence
        self.counters = counters
        self.settings = settings
        self.gateway = gateway
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "ping": self.ping,
            "status": self.status,
            "set-threshold": self.set_threshold,
            "calibrate": self.calibrate,
            "reload-model": self.reload_model,
            "feedback": self.feedback,
        }
        assert tuple(self._handlers) == COMMAND_NAMES, "agent.settings.COMMAND_NAMES lists every command"

    def handle(self, name: str, raw: bytes | TooLarge) -> dict[str, Any]:
        """Carry out one command; returns the reply (also for bad input). Never raises."""
        request_id = None
        try:
            body = parse_command(raw)
            request_id = request_id_of(body)
            handler = self._handlers.get(name)
            if handler is None:
                raise CommandError(f"unknown command {clip(name, 64)!r}; known: {', '.join(sorted(self._handlers))}")
            if name not in self.settings.allow:
                raise CommandError(f"command {name} is switched off on this gateway (EDGE_AGENT_COMMANDS__ALLOW)")
            result = handler(body)
            reply: dict[str, Any] = {"request_id": request_id, "ok": True, **result}
            self.counters.inc("commands.ok")
        except CommandError as e:
            reply = {"request_id": request_id, "ok": False, "reason": clip(e, 500)}
            self.counters.inc("commands.failed")
        except Exception as e:  # noqa: BLE001 - a command must never take the pipeline down
            log.exception("command %s failed", clip(name, 64))
            reply = {"request_id": request_id, "ok": False, "reason": f"internal error: {clip(e, 200)}"}
            self.counters.inc("commands.failed")
        reply["ts"] = iso(time.time())
        log.info("command %s (request %s) %s%s", clip(name, 64), clip(request_id, 64),
                 "ok" if reply["ok"] else "refused", "" if reply["ok"] else f": {reply['reason']}")
        return reply

    def asset(self, body: dict[str, Any]) -> Asset:
        """The asset a command addresses: ``body["asset"]``, or the only one."""
        name = body.get("asset")
        if name is None:
            if len(self.assets) == 1:
                asset = next(iter(self.assets.values()))
            else:
                raise CommandError(f"asset is required (one of {', '.join(sorted(self.assets))})")
        elif not isinstance(name, str) or name not in self.assets:
            known = [a for a in sorted(self.assets) if a]
            raise CommandError(f"no asset {clip(name, 64)!r} on this gateway " + (
                f"(one of {', '.join(known)})" if known else "(it has no [[assets]]: leave asset out)"))
        else:
            asset = self.assets[name]
        if asset.pipeline is None:
            raise CommandError(f"asset {asset.id} is down: {asset.failure}")
        working_on(asset.id)  # its log lines name it (the pipeline loop resets it after the command)
        return asset

    @staticmethod
    def _named(asset: Asset, reply: dict[str, Any]) -> dict[str, Any]:
        return {"asset": asset.id, **reply} if asset.id else reply

    def _state(self, asset: Asset) -> str:
        """The state a reply about ``asset`` names: its own with ``[[assets]]``, else the gateway's."""
        return self.gateway.asset_state(asset) if asset.id else self.gateway.state()

    # -- the commands ----------------------------------------------------------------------------------------

    def ping(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"device_id": self.gateway.device_id, "state": self.gateway.state()}

    def status(self, body: dict[str, Any]) -> dict[str, Any]:
        self.gateway.publish_status_and_stats()
        return {"state": self.gateway.state()}

    def set_threshold(self, body: dict[str, Any]) -> dict[str, Any]:
        asset = self.asset(body)
        if "threshold" not in body:
            raise CommandError("threshold is required (a number, or null to go back to the calibrated one)")
        value = body["threshold"]
        pipe = asset.pipeline
        assert pipe is not None
        if value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not _finite(value):
                raise CommandError("threshold must be a finite number or null")
            lo, hi = self.threshold_bounds(asset)
            if not lo <= value <= hi:
                raise CommandError(f"threshold {value:.6g} outside the allowed range [{lo:.6g}, {hi:.6g}]")
            value = float(value)
        before, old = pipe.command_threshold, pipe.params.threshold
        if value == before:
            return self._named(asset, {"threshold": old, "changed": False})
        in_force = pipe.set_threshold(value)
        try:
            save_overrides(asset.overrides_path, {"threshold": value} if value is not None else {})
        except OSError as e:
            log.error("could not persist the threshold in %s (%s): it holds until a restart", asset.overrides_path, e)
        log.warning("threshold %.6g -> %.6g (%s, by command)", old, in_force,
                    "back to the configured/calibrated one" if value is None else "override")
        self.gateway.status_changed()
        return self._named(asset, {"threshold": in_force, "changed": True})

    def threshold_bounds(self, asset: Asset) -> tuple[float, float]:
        c = self.settings
        assert asset.pipeline is not None
        base = asset.pipeline.natural_threshold()
        lo = c.threshold_min if c.threshold_min is not None else base / 10
        hi = c.threshold_max if c.threshold_max is not None else base * 10
        return lo, hi

    def calibrate(self, body: dict[str, Any]) -> dict[str, Any]:
        asset = self.asset(body)
        pipe = asset.pipeline
        assert pipe is not None
        cal = pipe.calibrator
        if not cal.enabled:
            raise CommandError("teach-in is off for this model (EDGE_AGENT_CALIBRATION__SAMPLES=0 or the sidecar's samples 0)")
        if cal.active:  # restarting it would only throw away what is collected (and keep alerts off longer)
            return self._named(asset, {"state": self._state(asset), "samples": cal.samples,
                                       "collected": cal.collected, "changed": False})
        log.warning("teach-in started again by command (threshold was %.6g)", pipe.params.threshold)
        pipe.recalibrate()
        self.gateway.status_changed()
        return self._named(asset, {"state": self._state(asset), "samples": cal.samples, "changed": True})

    def reload_model(self, body: dict[str, Any]) -> dict[str, Any]:
        asset = self.asset(body)
        path, sha = body.get("path"), body.get("sha256")
        if not isinstance(path, str) or not path:
            raise CommandError("path (of the model on the gateway, or a bundled model's name) is required")
        if not isinstance(sha, str) or len(sha) != 64:
            raise CommandError("sha256 (64 hex digits of the model file) is required")
        # a bundled model's name (generic, pump-anomaly, ...) as EDGE_AGENT_MODEL__PATH takes it; still only from
        # the allowed directories
        allowed = allowed_model(resolve(path), model_dirs(asset.settings))
        if allowed is None:  # the same answer whether it is missing or outside the directories: no file probing
            raise CommandError(f"no model {clip(path, 200)} that this gateway may load (EDGE_AGENT_COMMANDS__MODEL_DIRS)")
        return self._named(asset, self.swap(asset, allowed, sha.lower(), by_command=True))

    def swap(self, asset: Asset, path: Path, sha256: str, by_command: bool) -> dict[str, Any]:
        """Load, check, canary, then swap between two windows; on any failure keep the old model (CommandError)."""
        s = asset.settings
        new = check_new_model(path, sha256, s.model.runtime, s.model.num_threads)
        pipe = asset.pipeline
        assert pipe is not None
        old = pipe.model
        if getattr(new, "needs_channels", False) and not getattr(old, "needs_channels", False):
            new = new.with_channels(list(old.sidecar.channels))  # a generic detector takes over the channels in use
        override = {**new.describe(), "path": str(path)} if by_command else None
        if new.sha256 == old.sha256 and new.sidecar == old.sidecar:  # the model running: nothing to change
            return {"model": old.describe(), "previous": old.describe(), "state": self._state(asset), "changed": False}
        why = pipe.canary(new)
        if why is not None:
            raise CommandError(why)
        try:
            pipe.swap_model(new, override)  # refuses before it replaces anything (Pipeline._install)
        except ModelError as e:
            raise CommandError(str(e)) from e
        log.warning("model %s %s -> %s %s (%s)", old.name, old.version,
                    new.name, new.version, f"by command, {clip(path)}" if by_command else "the configured one")
        self.gateway.status_changed()
        return {"model": new.describe(), "previous": old.describe(), "state": self._state(asset), "changed": True}

    def reload_configured(self) -> None:
        """SIGHUP: load every asset's configured model again (a new file at the same path); keep the old one on
        failure."""
        for asset in self.assets.values():
            if asset.pipeline is None:
                continue
            working_on(asset.id)
            configured = asset.settings.model.path
            path = resolve(configured) if configured else default_model_path()
            try:
                try:
                    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()  # whatever is there now
                except OSError as e:
                    raise CommandError(f"{path}: cannot read ({e.strerror})") from e
                reply = self.swap(asset, path, sha256, by_command=False)
                log.info("SIGHUP: reloaded %s (%s%s)", clip(path), reply["model"]["version"],
                         "" if reply["changed"] else ", unchanged")
            except (CommandError, ModelError) as e:
                log.error("SIGHUP: kept the old model, %s refused: %s", clip(path), clip(e, 500))
        working_on("")

    def feedback(self, body: dict[str, Any]) -> dict[str, Any]:
        alert_id, label, note = body.get("alert_id"), body.get("label"), body.get("note", "")
        if not isinstance(alert_id, str) or not 0 < len(alert_id) <= 64:
            raise CommandError("alert_id (the alert's id, at most 64 characters) is required")
        if label not in LABELS:
            raise CommandError(f"label must be one of {', '.join(LABELS)}")
        if not isinstance(note, str) or len(note) > 2000:
            raise CommandError("note must be a string of at most 2000 characters")
        store = self.evidence
        if not store.has_alert(alert_id):
            raise CommandError(f"no evidence of alert {clip(alert_id, 64)} on this gateway (unknown, or evicted by EDGE_AGENT_ALERTS__EVIDENCE_MAX_BYTES)")
        owner = (store.get(alert_id) or {}).get("asset", "")  # the evidence knows its asset
        if "asset" not in body and len(self.assets) > 1:
            body = {**body, "asset": owner}
        asset = self.asset(body)
        if owner != asset.id:
            raise CommandError(f"alert {clip(alert_id, 64)} was raised by asset {owner or '(none)'!r}, not {asset.id!r}")
        stored = store.label(alert_id, label, note if "note" in body else None)  # no note: the one stored is kept
        assert asset.pipeline is not None
        learned = asset.pipeline.learn(alert_id, label)  # false_positive: fold into normal; else undo a fold
        return self._named(asset, {"alert_id": alert_id, "label": label, "feedback": store.counts(), **learned,
                                   "changed": stored or bool(learned.get("learned"))})  # the label or its note


# -- models a command may load -------------------------------------------------------------------------------

def model_dirs(settings: Settings) -> list[Path]:
    """Where reload-model may load from: EDGE_AGENT_COMMANDS__MODEL_DIRS, else the bundled models' directory and
    the configured model's directory (where an operator puts a model for the gateway, as the README says)."""
    if settings.commands.model_dirs:
        return [Path(d) for d in settings.commands.model_dirs]
    dirs = [bundled_dir()]
    if settings.model.path:
        dirs.append(Path(settings.model.path).parent)
    return dirs


def allowed_model(path: Path, dirs: list[Path]) -> Path | None:
    """``path`` resolved (symlinks followed), when it and its sidecar are files inside one of ``dirs``; else None
    — the same for a missing file and a forbidden one, so that replies do not tell which files exist."""
    try:
        real = path.resolve(strict=True)
        sidecar = real.with_suffix(".json").resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    roots = []
    for d in dirs:
        try:
            roots.append(d.resolve(strict=True))
        except (OSError, RuntimeError):
            continue
    inside = lambda p: any(p.is_relative_to(r) for r in roots)  # noqa: E731
    if not (real.is_file() and sidecar.is_file() and inside(real) and inside(sidecar)):
        return None
    return real


def check_new_model(path: Path, sha256: str, runtime: str, num_threads: int) -> Any:
    """Load a model for a swap; CommandError with the reason when it is refused."""
    try:
        model = open_model(path, runtime=runtime, num_threads=num_threads)
    except ModelError as e:
        raise CommandError(str(e)) from e
    if model.sha256 != sha256:
        raise CommandError(f"{path}: sha256 is {model.sha256}, the command expected {sha256}")
    return model


# -- overrides.json: what set-threshold changed, across restarts ---------------------------------------------

def load_overrides(path: Path, read_only: bool = False) -> dict[str, Any]:
    """The persisted overrides (``{"threshold": x}``), or {} — a file that is not that (garbage, NaN, a list, a
    threshold that is not a finite positive number) is set aside with a warning, as a corrupt file is (left where
    it is with ``read_only``: a command that only shows)."""
    bad = (lambda why: None) if read_only else (lambda why: set_aside(path, why))
    try:
        data = json.loads(path.read_bytes(), parse_constant=_no_constant)
    except FileNotFoundError:
        return {}
    except (ValueError, RecursionError) as e:  # also UnicodeDecodeError
        bad(f"not JSON ({clip(e, 120)})")
        return {}
    if not isinstance(data, dict) or set(data) - {"threshold"}:
        bad("not an object with an optional threshold")
        return {}
    t = data.get("threshold")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not _finite(t) or t <= 0):
        bad(f"threshold {clip(t, 40)} is not a finite positive number")
        return {}
    return {"threshold": float(t)} if t is not None else {}


def save_overrides(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, allow_nan=False).encode())
