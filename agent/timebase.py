"""A stream's data time: refuses a reading far from it, takes a sustained far run as a stepped clock. Used by the
cleaner (per sensor) and the aligner. Split from agent.clean, which re-exports these names."""

from __future__ import annotations

TIME_STEP_READINGS = 5  # readings in a row that must agree on a far time before it is taken as a clock step
TIME_STEP = "time_step"  # TimeBase.judge: this reading completes a sustained step


class TimeBase:
    """A stream's recent data time. A reading far from it (more than ``max_jump_s`` ahead of where the time should
    be by now, or behind it) is refused alone; ``TIME_STEP_READINGS`` far readings in a row that agree with each
    other (increasing, each within ``max_jump_s`` of the previous) are a stepped device clock: the caller takes the
    last one as the new time base. ``max_jump_s = 0``: only the order is checked. ``ordered=False`` (a merged stream:
    several topics, agent.align): a far reading at most ``behind_s`` behind the newest of the run (another topic
    stamping the same time, or a little behind) keeps the run going without counting: a step still needs
    ``TIME_STEP_READINGS`` distinct timestamps going forward, so one device with a wrong clock on several topics
    (each stamping the same time) is refused, not taken as the stream's time."""

    __slots__ = ("max_jump_s", "ordered", "behind_s", "last_ts", "step_s", "_at", "_run", "_run_ts")

    def __init__(self, max_jump_s: float = 0.0, ordered: bool = True, behind_s: float = 0.0):
        self.max_jump_s = max_jump_s
        self.ordered = ordered
        self.behind_s = behind_s
        self.last_ts: float | None = None  # of the last accepted reading
        self._at = 0.0  # clock() when it was accepted: data time runs on with the clock while a sensor is silent
        self._run = 0  # far readings in a row that agree
        self._run_ts = 0.0
        self.step_s = 0.0  # the last step taken: how far the new time base is from where the old one would be now

    def judge(self, ts: float, now: float) -> str | None:
        """None when ``ts`` may be accepted; else ``duplicate_ts``/``out_of_order`` (just behind), ``future_ts``/
        ``past_ts`` (far from the stream's time), or ``TIME_STEP`` (this reading completes a sustained step)."""
        last, jump = self.last_ts, self.max_jump_s
        if last is None:
            return None
        if ts > last:
            if not jump or ts - last - max(0.0, now - self._at) <= jump:
                return None
            reason = "future_ts"
        elif not jump or last - ts <= jump:
            return "duplicate_ts" if ts == last else "out_of_order"
        else:
            reason = "past_ts"
        d = ts - self._run_ts
        if not self.ordered and self._run > 0 and -self.behind_s <= d <= 0:
            return reason  # beside the run's newest: keeps it going, adds nothing
        self._run = self._run + 1 if self._run > 0 and 0 < d <= jump else 1
        self._run_ts = ts
        if self._run < TIME_STEP_READINGS:
            return reason
        self._run = 0
        self.step_s = ts - last - max(0.0, now - self._at)
        return TIME_STEP

    def accept(self, ts: float, now: float) -> None:
        self.last_ts, self._at, self._run = ts, now, 0

    def reset(self) -> None:
        """Forget the time base: the next reading starts a new one."""
        self.last_ts, self._run = None, 0
