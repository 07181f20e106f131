"""Commands from the control room: ``{prefix}/{device_id}/cmd/<name>`` in, ``…/reply/<name>`` out.

A command is JSON with a ``request_id``; the reply carries the same ``request_id``, ``ok`` and, when not ok, a
``reason``. An unknown, switched-off or malformed command gets a not-ok reply and changes nothing; a command that
asks for what is already in force changes nothing either (``changed: false``). ``CommandGate`` runs on paho's
thread: a token bucket and a size limit in front of the queue, so a flood costs neither memory nor a silent loss
(every drop is counted, and logged once per burst). ``Commands`` runs on the pipeline thread (between two
readings), so it needs no locks and a model swap never drops a reading.

Threat model (README, Security): whoever may publish to ``cmd/`` can change thresholds, restart teach-in and load
models from the allowed directories. The broker's ACL decides who that is (``deploy/mosquitto/``); the agent
bounds what a command can do: allow-list, rate, size, value ranges, model directories, and no command that
changes nothing can reset the alert debounce.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import queue
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from agent.bundled import bundled_dir, default_model_path
from agent.counters import Counters
from agent.evidence import LABELS
from agent.detectors import open_model, resolve
from agent.files import atomic_write, set_aside
from agent.generic import GenericModel
from agent.infer import Model, ModelError
from agent.logsafe import clip
from agent.parse import iso
from agent.settings import COMMAND_NAMES, Settings

if TYPE_CHECKING:
    from agent.app import Agent

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 16 * 1024  # a command is a small JSON object; the feedback note (2000 chars) fits escaped
MAX_REQUEST_ID = 128  # characters of a string request_id (it is echoed in the reply)
QUEUE_SIZE = 100  # commands waiting for the pipeline thread


class CommandError(Exception):
    """A command that cannot be carried out; the message is the reply's ``reason``."""


class TooLarge:
    """Stands in the queue for a payload over the limit (its bytes are not kept)."""

    def __init__(self, size: int):
        self.size = size


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``burst`` saved up; ``take`` spends one when there is one."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate_per_s, self.burst, self._clock = rate_per_s, burst, clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class CommandGate:
    """Between paho's thread and the pipeline thread: rate limit, size limit, bounded queue. Drops are counted
    (``commands.dropped.<why>``) and logged per burst, never per message: when a burst starts, every
    ``BURST_LOG_S`` while it lasts, and once it is over (a command accepted ``BURST_QUIET_S`` after the last drop)."""

    BURST_QUIET_S = 10.0
    BURST_LOG_S = 600.0

    def __init__(self, counters: Counters, rate_per_minute: int, burst: int, clock: Callable[[], float] = time.monotonic):
        self.counters = counters
        self.bucket = TokenBucket(rate_per_minute / 60.0, burst, clock)
        self.queue: queue.Queue[tuple[str, bytes | TooLarge]] = queue.Queue(maxsize=QUEUE_SIZE)
        self._clock = clock
        self._dropped_in_burst = 0
        self._last_drop = self._logged_at = -math.inf

    def offer(self, name: str, raw: bytes) -> None:
        """Called on paho's thread for every message on ``cmd/+``."""
        if not self.bucket.take():
            self._drop("rate_limited", name)
            return
        item: bytes | TooLarge = TooLarge(len(raw)) if len(raw) > MAX_PAYLOAD_BYTES else raw
        try:
            self.queue.put_nowait((name, item))
        except queue.Full:
            self._drop("queue_full", name)
            return
        if self._dropped_in_burst and self._clock() - self._last_drop >= self.BURST_QUIET_S:
            log.warning("commands: the burst is over, %d were dropped (rate limit EDGE_AGENT_COMMANDS__RATE_PER_MINUTE)",
                        self._dropped_in_burst)
            self._dropped_in_burst = 0

    def _drop(self, why: str, name: str) -> None:
        self.counters.inc(f"commands.dropped.{why}")
        now = self._clock()
        if not self._dropped_in_burst:
            self._logged_at = now
            log.warning("commands arrive faster than they may be carried out (%s, e.g. %s): dropping them without "
                        "a reply until the rate falls (counted in stats commands.dropped)", why, clip(name, 64))
        elif now - self._logged_at >= self.BURST_LOG_S:
            self._logged_at = now
            log.warning("commands: still dropping, %d so far in this burst", self._dropped_in_burst)
        self._dropped_in_burst += 1
        self._last_drop = now


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_command(raw: bytes | TooLarge) -> dict[str, Any]:
    """The command's JSON object, or CommandError saying why the payload is not one."""
    if isinstance(raw, TooLarge):
        raise CommandError(f"payload of {raw.size} bytes is over the limit of {MAX_PAYLOAD_BYTES}")
    try:
        body = json.loads(raw, parse_constant=_no_constant) if raw else None
    except RecursionError:
        raise CommandError("payload is not JSON (nested too deeply)") from None
    except ValueError as e:  # also UnicodeDecodeError
        raise CommandError(f"payload is not JSON ({clip(e, 120)})") from None
    if not isinstance(body, dict):
        raise CommandError("payload must be a JSON object")
    return body


def request_id_of(body: dict[str, Any]) -> str | int:
    rid = body.get("request_id")
    if isinstance(rid, str) and 0 < len(rid) <= MAX_REQUEST_ID:
        return rid
    if isinstance(rid, int) and not isinstance(rid, bool) and abs(rid) < 2**63:
        return rid
    raise CommandError(f"request_id (a string of at most {MAX_REQUEST_ID} characters, or an integer) is required")


class Commands:
    """Carries out commands against the running agent (on the pipeline thread)."""

    def __init__(self, agent: "Agent"):
        self.agent = agent
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
        counters = self.agent.counters
        try:
            body = parse_command(raw)
            request_id = request_id_of(body)
            handler = self._handlers.get(name)
            if handler is None:
                raise CommandError(f"unknown command {clip(name, 64)!r}; known: {', '.join(sorted(self._handlers))}")
            if name not in self.agent.settings.commands.allow:
                raise CommandError(f"command {name} is switched off on this gateway (EDGE_AGENT_COMMANDS__ALLOW)")
            result = handler(body)
            reply: dict[str, Any] = {"request_id": request_id, "ok": True, **result}
            counters.inc("commands.ok")
        except CommandError as e:
            reply = {"request_id": request_id, "ok": False, "reason": clip(e, 500)}
            counters.inc("commands.failed")
        except Exception as e:  # noqa: BLE001 - a command must never take the pipeline down
            log.exception("command %s failed", clip(name, 64))
            reply = {"request_id": request_id, "ok": False, "reason": f"internal error: {clip(e, 200)}"}
            counters.inc("commands.failed")
        reply["ts"] = iso(time.time())
        log.info("command %s (request %s) %s%s", clip(name, 64), clip(request_id, 64),
                 "ok" if reply["ok"] else "refused", "" if reply["ok"] else f": {reply['reason']}")
        return reply

    # -- the commands ----------------------------------------------------------------------------------------

    def ping(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"device_id": self.agent.settings.device_id, "state": self.agent.state()}

    def status(self, body: dict[str, Any]) -> dict[str, Any]:
        self.agent.publish_status_and_stats()
        return {"state": self.agent.state()}

    def set_threshold(self, body: dict[str, Any]) -> dict[str, Any]:
        if "threshold" not in body:
            raise CommandError("threshold is required (a number, or null to go back to the calibrated one)")
        value = body["threshold"]
        pipe = self.agent.pipeline
        if value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not _finite(value):
                raise CommandError("threshold must be a finite number or null")
            lo, hi = self.threshold_bounds()
            if not lo <= value <= hi:
                raise CommandError(f"threshold {value:.6g} outside the allowed range [{lo:.6g}, {hi:.6g}]")
            value = float(value)
        before, old = pipe.command_threshold, pipe.params.threshold
        if value == before:
            return {"threshold": old, "changed": False}
        in_force = pipe.set_threshold(value)
        try:
            save_overrides(self.agent.overrides_path, {"threshold": value} if value is not None else {})
        except OSError as e:
            log.error("could not persist the threshold in %s (%s): it holds until a restart", self.agent.overrides_path, e)
        log.warning("threshold %.6g -> %.6g (%s, by command)", old, in_force,
                    "back to the configured/calibrated one" if value is None else "override")
        self.agent.status_changed()
        return {"threshold": in_force, "changed": True}

    def threshold_bounds(self) -> tuple[float, float]:
        c = self.agent.settings.commands
        base = self.agent.pipeline.natural_threshold()
        lo = c.threshold_min if c.threshold_min is not None else base / 10
        hi = c.threshold_max if c.threshold_max is not None else base * 10
        return lo, hi

    def calibrate(self, body: dict[str, Any]) -> dict[str, Any]:
        pipe = self.agent.pipeline
        cal = pipe.calibrator
        if cal.samples <= 0:
            raise CommandError("teach-in is off for this model (EDGE_AGENT_CALIBRATION__SAMPLES=0 or the sidecar's samples 0)")
        if cal.active:  # restarting it would only throw away what is collected (and keep alerts off longer)
            return {"state": self.agent.state(), "samples": cal.samples, "collected": cal.collected, "changed": False}
        log.warning("teach-in started again by command (threshold was %.6g)", pipe.params.threshold)
        pipe.recalibrate()
        self.agent.status_changed()
        return {"state": self.agent.state(), "samples": cal.samples, "changed": True}

    def reload_model(self, body: dict[str, Any]) -> dict[str, Any]:
        path, sha = body.get("path"), body.get("sha256")
        if not isinstance(path, str) or not path:
            raise CommandError("path (of the .tflite on the gateway) is required")
        if not isinstance(sha, str) or len(sha) != 64:
            raise CommandError("sha256 (64 hex digits of the .tflite) is required")
        allowed = allowed_model(Path(path), model_dirs(self.agent.settings))
        if allowed is None:  # the same answer whether it is missing or outside the directories: no file probing
            raise CommandError(f"no model {clip(path, 200)} that this gateway may load (EDGE_AGENT_COMMANDS__MODEL_DIRS)")
        return self.swap(allowed, sha.lower(), by_command=True)

    def swap(self, path: Path, sha256: str, by_command: bool) -> dict[str, Any]:
        """Load, check, canary, then swap between two windows; on any failure keep the old model (CommandError)."""
        s = self.agent.settings
        new = check_new_model(path, sha256, s.model.runtime, s.model.num_threads)
        pipe = self.agent.pipeline
        old = pipe.model
        override = {**new.describe(), "path": str(path)} if by_command else None
        if new.sha256 == old.sha256 and new.sidecar == old.sidecar:  # the model running: nothing to change
            return {"model": old.describe(), "previous": old.describe(), "state": self.agent.state(), "changed": False}
        why = pipe.canary(new)
        if why is not None:
            raise CommandError(why)
        pipe.swap_model(new, override)
        self.agent.model = new
        log.warning("model %s %s -> %s %s (%s)", old.name, old.version, new.name, new.version,
                    f"by command, {clip(path)}" if by_command else "the configured one")
        self.agent.status_changed()
        return {"model": new.describe(), "previous": old.describe(), "state": self.agent.state(), "changed": True}

    def reload_configured(self) -> None:
        """SIGHUP: load the configured model again (a new file at the same path); keep the old one on failure."""
        configured = self.agent.settings.model.path
        path = resolve(configured) if configured else default_model_path()
        try:
            try:
                sha256 = hashlib.sha256(path.read_bytes()).hexdigest()  # whatever is there now
            except OSError as e:
                raise CommandError(f"{path}: cannot read ({e.strerror})") from e
            reply = self.swap(path, sha256, by_command=False)
            log.info("SIGHUP: reloaded %s (%s%s)", clip(path), reply["model"]["version"],
                     "" if reply["changed"] else ", unchanged")
        except (CommandError, ModelError) as e:
            log.error("SIGHUP: kept the old model, %s refused: %s", clip(path), clip(e, 500))

    def feedback(self, body: dict[str, Any]) -> dict[str, Any]:
        alert_id, label, note = body.get("alert_id"), body.get("label"), body.get("note", "")
        if not isinstance(alert_id, str) or not 0 < len(alert_id) <= 64:
            raise CommandError("alert_id (the alert's id, at most 64 characters) is required")
        if label not in LABELS:
            raise CommandError(f"label must be one of {', '.join(LABELS)}")
        if not isinstance(note, str) or len(note) > 2000:
            raise CommandError("note must be a string of at most 2000 characters")
        store = self.agent.evidence
        if not store.has_alert(alert_id):
            raise CommandError(f"no evidence of alert {clip(alert_id, 64)} on this gateway (unknown, or evicted by EDGE_AGENT_ALERTS__EVIDENCE_MAX_BYTES)")
        store.label(alert_id, label, note)
        learned = self.agent.pipeline.learn(alert_id, label)  # false_positive: fold into normal; else undo a fold
        return {"alert_id": alert_id, "label": label, "feedback": store.counts(), **learned}


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


def check_new_model(path: Path, sha256: str, runtime: str, num_threads: int) -> Model | GenericModel:
    """Load a model for a swap; CommandError with the reason when it is refused."""
    try:
        model = open_model(path, runtime=runtime, num_threads=num_threads)
    except ModelError as e:
        raise CommandError(str(e)) from e
    if model.sha256 != sha256:
        raise CommandError(f"{path}: sha256 is {model.sha256}, the command expected {sha256}")
    return model


# -- overrides.json: what set-threshold changed, across restarts ---------------------------------------------

def load_overrides(path: Path) -> dict[str, Any]:
    """The persisted overrides (``{"threshold": x}``), or {} — a file that is not that (garbage, NaN, a list, a
    threshold that is not a finite positive number) is set aside with a warning, as a corrupt file is."""
    try:
        data = json.loads(path.read_bytes(), parse_constant=_no_constant)
    except FileNotFoundError:
        return {}
    except (ValueError, RecursionError) as e:  # also UnicodeDecodeError
        set_aside(path, f"not JSON ({clip(e, 120)})")
        return {}
    if not isinstance(data, dict) or set(data) - {"threshold"}:
        set_aside(path, "not an object with an optional threshold")
        return {}
    t = data.get("threshold")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not _finite(t) or t <= 0):
        set_aside(path, f"threshold {clip(t, 40)} is not a finite positive number")
        return {}
    return {"threshold": float(t)} if t is not None else {}


def save_overrides(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, allow_nan=False).encode())
