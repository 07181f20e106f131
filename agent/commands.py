"""Commands from the control room: ``{prefix}/{device_id}/cmd/<name>`` in, ``…/reply/<name>`` out.

A command is JSON with a ``request_id``; the reply carries the same ``request_id``, ``ok`` and, when not ok, a
``reason``. An unknown command or a bad payload gets a not-ok reply and changes nothing. Commands run on the
pipeline thread (between two readings), so they need no locks and a model swap never drops a reading.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from agent.evidence import LABELS
from agent.detectors import open_model
from agent.generic import GenericModel
from agent.infer import Model, ModelError
from agent.parse import iso

if TYPE_CHECKING:
    from agent.app import Agent

log = logging.getLogger(__name__)


class CommandError(Exception):
    """A command that cannot be carried out; the message is the reply's ``reason``."""


class Commands:
    """Carries out commands against the running agent."""

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

    def handle(self, name: str, raw: bytes) -> dict[str, Any]:
        """Carry out one command; returns the reply (also for bad input)."""
        request_id = None
        try:
            try:
                body = json.loads(raw) if raw else None
            except ValueError as e:
                raise CommandError(f"payload is not JSON ({e})") from e
            if not isinstance(body, dict):
                raise CommandError("payload must be a JSON object")
            request_id = body.get("request_id")
            if not isinstance(request_id, (str, int)) or isinstance(request_id, bool) or request_id == "":
                raise CommandError("request_id (a string or number) is required")
            handler = self._handlers.get(name)
            if handler is None:
                raise CommandError(f"unknown command {name!r}; known: {', '.join(sorted(self._handlers))}")
            result = handler(body)
            reply: dict[str, Any] = {"request_id": request_id, "ok": True, **result}
            self.agent.counters.inc("commands.ok")
        except CommandError as e:
            reply = {"request_id": request_id, "ok": False, "reason": str(e)}
            self.agent.counters.inc("commands.failed")
        except Exception as e:  # noqa: BLE001 - a command must never take the pipeline down
            log.exception("command %s failed", name)
            reply = {"request_id": request_id, "ok": False, "reason": f"internal error: {e}"}
            self.agent.counters.inc("commands.failed")
        reply["ts"] = iso(time.time())
        log.info("command %s %s%s", name, "ok" if reply["ok"] else "refused", "" if reply["ok"] else f": {reply['reason']}")
        return reply

    # -- the commands ----------------------------------------------------------------------------------------

    def ping(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"device_id": self.agent.settings.device_id, "state": self.agent.state()}

    def status(self, body: dict[str, Any]) -> dict[str, Any]:
        self.agent.publish_status_and_stats()
        return {"state": self.agent.state()}

    def set_threshold(self, body: dict[str, Any]) -> dict[str, Any]:
        value = body.get("threshold", "missing")
        if value == "missing":
            raise CommandError("threshold is required (a number, or null to go back to the calibrated one)")
        pipe = self.agent.pipeline
        if value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise CommandError("threshold must be a finite number or null")
            lo, hi = self.threshold_bounds()
            if not lo <= value <= hi:
                raise CommandError(f"threshold {value} outside the allowed range [{lo:.6g}, {hi:.6g}]")
        in_force = pipe.set_threshold(None if value is None else float(value))
        self.agent.save_overrides({"threshold": value})
        return {"threshold": in_force}

    def threshold_bounds(self) -> tuple[float, float]:
        c = self.agent.settings.commands
        pipe = self.agent.pipeline
        base = pipe.natural_threshold()
        lo = c.threshold_min if c.threshold_min is not None else base / 10
        hi = c.threshold_max if c.threshold_max is not None else base * 10
        return lo, hi

    def calibrate(self, body: dict[str, Any]) -> dict[str, Any]:
        pipe = self.agent.pipeline
        if pipe.calibrator.samples <= 0:
            raise CommandError("teach-in is off for this model (EDGE_AGENT_CALIBRATION__SAMPLES=0 or the sidecar's samples 0)")
        pipe.recalibrate()
        return {"state": self.agent.state(), "samples": pipe.calibrator.samples}

    def reload_model(self, body: dict[str, Any]) -> dict[str, Any]:
        path, sha = body.get("path"), body.get("sha256")
        if not isinstance(path, str) or not path:
            raise CommandError("path (of the .tflite on the gateway) is required")
        if not isinstance(sha, str) or len(sha) != 64:
            raise CommandError("sha256 (64 hex digits of the .tflite) is required")
        return self.agent.reload_model(Path(path), sha.lower())

    def feedback(self, body: dict[str, Any]) -> dict[str, Any]:
        alert_id, label, note = body.get("alert_id"), body.get("label"), body.get("note", "")
        if not isinstance(alert_id, str) or not alert_id:
            raise CommandError("alert_id is required")
        if label not in LABELS:
            raise CommandError(f"label must be one of {', '.join(LABELS)}")
        if not isinstance(note, str) or len(note) > 2000:
            raise CommandError("note must be a string of at most 2000 characters")
        store = self.agent.evidence
        if not store.has_alert(alert_id):
            raise CommandError(f"no evidence of alert {alert_id} on this gateway (unknown, or evicted by EDGE_AGENT_ALERTS__EVIDENCE_MAX_BYTES)")
        store.label(alert_id, label, note)
        learned = self.agent.pipeline.learn(alert_id, label)  # false_positive: fold into normal; else undo a fold
        return {"alert_id": alert_id, "label": label, "feedback": store.counts(), **learned}


def check_new_model(path: Path, sha256: str, runtime: str, num_threads: int) -> Model | GenericModel:
    """Load a model for a swap; CommandError with the reason when it is refused."""
    if not path.is_file():
        raise CommandError(f"{path}: no such file on the gateway")
    try:
        model = open_model(path, runtime=runtime, num_threads=num_threads)
    except ModelError as e:
        raise CommandError(str(e)) from e
    if model.sha256 != sha256:
        raise CommandError(f"{path}: sha256 is {model.sha256}, the command expected {sha256}")
    return model
