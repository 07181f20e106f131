"""The alert policy: cooldown and rate limit on raised alerts, in data time (split from agent.decide, whose
``Decisions`` holds back a raise it refuses and raises it when it has room, the fault still on)."""

from __future__ import annotations

from collections import deque


class AlertPolicy:
    """Cooldown and rate limit on raised alerts, in data time. A suppressed alert is counted, never silent, and
    raised when the policy has room again if its fault is still on then (``Decisions``)."""

    def __init__(self, cooldown_s: float = 0.0, rate_limit_per_hour: int = 0):
        self.cooldown_s = cooldown_s
        self.rate_limit_per_hour = rate_limit_per_hour
        self._last_clear: dict[str, float] = {}
        self._raises: deque[float] = deque()

    def allow(self, sensor: str, ts: float) -> bool:
        """May an alert be raised on ``sensor`` at ``ts``? (records it when yes)."""
        last = self._last_clear.get(sensor)
        if self.cooldown_s and last is not None and 0 <= ts - last < self.cooldown_s:  # < 0: the clock stepped back
            return False
        if self.rate_limit_per_hour:
            if self._raises and ts < max(self._raises) - 3600:  # data time stepped back more than the hour counted
                self._raises.clear()  # (a clock step): it starts here (sensors' clocks a few seconds apart: no)
            while self._raises and ts - self._raises[0] >= 3600:
                self._raises.popleft()
            if len(self._raises) >= self.rate_limit_per_hour:
                return False
            self._raises.append(ts)  # only with a limit: without one the list would grow for ever
        return True

    def room_at(self, sensor: str, ts: float) -> float:
        """The data time from which ``allow`` would let a raise on ``sensor`` through, as things stand at ``ts``
        (``ts`` when it would now): the cooldown's end, the hour of the oldest raise that must expire."""
        at = ts
        last = self._last_clear.get(sensor)
        if self.cooldown_s and last is not None and 0 <= ts - last < self.cooldown_s:
            at = last + self.cooldown_s
        limit = self.rate_limit_per_hour
        if limit and len(self._raises) >= limit:
            at = max(at, self._raises[-limit] + 3600)
        return at

    def cleared(self, sensor: str, ts: float) -> None:
        self._last_clear[sensor] = ts

    def forget(self, sensor: str) -> None:
        """Drop what is kept of an idle sensor (its cooldown has long passed)."""
        self._last_clear.pop(sensor, None)
