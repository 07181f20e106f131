"""Small helpers for tests that drive a Pipeline directly."""

from __future__ import annotations

from typing import Any, Iterable

from agent.messages import Messages
from agent.records import Outgoing


def outgoing(events: Iterable[Any], device_id: str = "gw") -> list[Outgoing]:
    """The messages the daemon would publish for these events (agent.messages, the one place that builds them)."""
    return Messages(device_id).outgoing(list(events))
