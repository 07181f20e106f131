"""The gate between paho's thread and the pipeline thread for commands: a token bucket and a size limit in front
of a bounded queue, so that a flood costs neither memory nor a silent loss (every drop is counted, and logged once
per burst); and the parsing every command shares (a JSON object with a ``request_id``)."""

from __future__ import annotations

import json
import logging
import math
import queue
import time
from typing import Any, Callable

from agent.counters import Counters
from agent.logsafe import clip

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
