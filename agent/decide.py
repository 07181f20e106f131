"""Decisions: the alert state machine (threshold, k-of-n debounce, hysteresis, receded clear), and ``Decisions``,
which holds one for every sensor of a pipeline, the alert policy (cooldown, rate limit: agent.alert_policy) and the
parameters in force (a command's threshold, else the configured, the calibrated or the model's).

Pure and single-threaded (the pipeline thread owns them), so they are tested without broker or hardware.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import deque
from dataclasses import dataclass
from itertools import repeat
from operator import gt
from typing import Any

import numpy as np

from agent.alert_policy import AlertPolicy
from agent.counters import Counters
from agent.logsafe import clip
from agent.records import Inference

log = logging.getLogger(__name__)

RAISED = "raised"
CLEARED = "cleared"


@dataclass
class Transition:
    """An alert changing state, with what caused it."""

    state: str  # RAISED | CLEARED
    alert_id: str
    sensor: str
    inference: Inference
    threshold: float
    peak_score: float
    receded: bool = False  # cleared because the event receded (under recede_ratio x its peak), not under the clear level


RECEDE_MARGIN = 0.3  # after a "receded" clear, a new raise needs 30 % more than the score it cleared at


class AlertMachine:
    """One sensor's alert: raised when ``k`` of the last ``n`` windows score over the threshold, cleared when
    ``k`` of the last ``n`` score under ``threshold x clear_ratio`` (hysteresis). The history restarts at every
    transition, so a raise needs k fresh windows over the threshold and a clear k fresh windows under it.

    With ``recede_ratio`` > 0 an alert also clears when the event has receded: k of the last n windows under
    ``recede_ratio x`` the alert's peak score, even if still over the clear level (a machine that settles a little
    away from where it was taught after a fault that is over). A new raise then needs the score to exceed the one
    it cleared at by ``RECEDE_MARGIN``; that floor decays back to the threshold with a time constant of
    ``refractory`` windows, so the settled state does not raise again while it is absorbed.

    The recent scores are kept (not just whether they were over), so that a new threshold re-judges them
    (``retune``) instead of forgetting the debounce: a command cannot silence alerts by resetting it.
    """

    def __init__(self, sensor: str, threshold: float, k: int, n: int, clear_ratio: float,
                 recede_ratio: float = 0.0, refractory: int = 1800):
        if not 1 <= k <= n:
            raise ValueError("need 1 <= k <= n")
        self.sensor = sensor
        self.threshold = threshold
        self.k, self.n, self.clear_ratio = k, n, clear_ratio
        self.recede_ratio = recede_ratio
        self._decay = math.exp(-1.0 / refractory) if refractory > 0 else 0.0
        self._scores: deque[float] = deque(maxlen=n)
        self._receded: deque[bool] = deque(maxlen=n)  # while raised: was the window under recede_ratio x the peak
        self.active_id: str | None = None
        self._peak = 0.0
        self._floor = 0.0  # a raise needs a score over this too (after a receded clear); decays each window
        self._quiet: float | None = None  # a level the kept scores are known to count fewer than k over

    @property
    def active(self) -> bool:
        return self.active_id is not None

    def update(self, inf: Inference) -> Transition | None:
        """Feed one scored window; a Transition when the alert is raised or cleared by it."""
        s = inf.score
        self._scores.append(s)
        if self.active_id is None:
            level = self.threshold
            if self._floor > level:
                level = self._floor
                self._floor *= self._decay
            self._receded.append(False)
            # windows over the level; at the level of the last window, which counted fewer than k, only a new
            # score over it can make k (an older score may only have left): no count needed
            if (s > level or level != self._quiet) and sum(map(gt, self._scores, repeat(level))) >= self.k:
                self.active_id = uuid.uuid4().hex
                self._peak = s
                self._floor = 0.0
                self._quiet = None
                self._scores.clear()
                self._receded.clear()
                return Transition(RAISED, self.active_id, self.sensor, inf, self.threshold, s)
            self._quiet = level
            return None
        self._peak = max(self._peak, s)
        under = self.threshold * self.clear_ratio
        self._receded.append(self.recede_ratio > 0 and s < self.recede_ratio * self._peak)
        if sum(1 for x, r in zip(self._scores, self._receded) if x < under or r) >= self.k:
            receded = s >= under  # cleared because the event receded, still over the clear level
            tr = Transition(CLEARED, self.active_id, self.sensor, inf, self.threshold, self._peak, receded)
            if receded:
                self._floor = s * (1 + RECEDE_MARGIN)
            self.active_id = None
            self._scores.clear()
            self._receded.clear()
            return tr
        return None

    # -- many windows at once (agent.pipeline_block): find where ``update`` acts, absorb the windows before it ------

    def _levels(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """While no alert is raised: the level each of the next ``m`` windows must exceed, and the floor before each
        (``m + 1`` values), decayed as ``update`` decays it, one multiplication per window."""
        floors = np.multiply.accumulate(np.concatenate(([self._floor], np.full(m, self._decay))))
        levels = np.where(floors[:m] > self.threshold, floors[:m], self.threshold)
        return levels, floors

    def first_change(self, scores: np.ndarray) -> int:
        """The index of the first of ``scores`` (the next windows' scores) at which ``update`` raises or clears the
        alert; ``len(scores)`` when none does. The windows before it change only the history (``absorb``)."""
        m, n = len(scores), self.n
        old = np.fromiter(self._scores, np.float64, len(self._scores))
        h = len(old)
        if self.active_id is None and self._floor <= self.threshold:  # one level for all: count over it
            flags = np.concatenate((old > self.threshold, scores > self.threshold))
        elif self.active_id is None:  # each window counts the last n scores over its own level
            levels, _ = self._levels(m)
            scores_in = np.concatenate((np.full(n, -np.inf), old, scores))
            last_n = np.lib.stride_tricks.sliding_window_view(scores_in, n)[h + 1:h + m + 1]
            over = np.flatnonzero((last_n > levels[:, None]).sum(axis=1) >= self.k)
            return int(over[0]) if over.size else m
        else:  # each score's flag is fixed when it comes: under the clear level, or receded
            under = self.threshold * self.clear_ratio
            old_flags = (old < under) | np.fromiter(self._receded, bool, len(self._receded))
            flags = np.concatenate((old_flags, (scores < under) | self._receded_flags(scores)))
        total = np.concatenate(([0], np.cumsum(flags)))  # windows count the flags of the last n scores
        ends = np.arange(h + 1, h + m + 1)
        counts = total[ends] - total[np.maximum(ends - n, 0)]
        over = np.flatnonzero(counts >= self.k)
        return int(over[0]) if over.size else m

    def _receded_flags(self, scores: np.ndarray) -> np.ndarray:
        if self.recede_ratio <= 0 or math.isnan(self._peak):  # max(nan, s) stays nan: nothing is under it
            return np.zeros(len(scores), dtype=bool)
        peaks = np.fmax.accumulate(np.concatenate(([self._peak], scores)))[1:]  # max(peak, s) as update takes it
        return scores < self.recede_ratio * peaks

    def absorb(self, scores: np.ndarray) -> None:
        """``update`` for each of ``scores``, none of which raises or clears (they precede ``first_change``)."""
        m = len(scores)
        if not m:
            return
        self._quiet = None
        if self.active_id is None:
            if self._floor > self.threshold:
                _, floors = self._levels(m)
                self._floor = float(floors[int(np.count_nonzero(floors[:m] > self.threshold))])
            self._receded.extend([False] * min(m, self.n))
        else:
            self._receded.extend(self._receded_flags(scores).tolist()[-self.n:])
            self._peak = max(self._peak, float(np.fmax.reduce(scores)))
        self._scores.extend(scores[-self.n:].tolist())

    def retune(self, threshold: float, k: int, n: int, clear_ratio: float, recede_ratio: float | None = None,
               refractory: int | None = None) -> None:
        """New decision parameters from the next window on; the recent scores are judged again by them (an
        active alert stays active until ``k`` windows are under the new clear level; a floor after a receded clear
        decays by the new ``refractory`` from here)."""
        if not 1 <= k <= n:
            raise ValueError("need 1 <= k <= n")
        self.threshold, self.k, self.clear_ratio = threshold, k, clear_ratio
        self._quiet = None  # the kept scores are judged again
        if recede_ratio is not None:
            self.recede_ratio = recede_ratio
        if refractory is not None:
            self._decay = math.exp(-1.0 / refractory) if refractory > 0 else 0.0
        if n != self.n:
            self.n = n
            self._scores = deque(self._scores, maxlen=n)
            self._receded = deque(self._receded, maxlen=n)

    def resume(self, alert_id: str, peak: float) -> None:
        """Raised with ``alert_id`` (an alert open before a restart: agent.open_alerts), ``peak`` its raise's score."""
        self.active_id, self._peak, self._floor, self._quiet = alert_id, peak, 0.0, None
        self._scores.clear()
        self._receded.clear()

    def reset(self) -> None:
        """Forget the debounce history (after a gap, or scores of another model); an active alert stays active."""
        self._scores.clear()
        self._receded.clear()
        self._quiet = None


@dataclass(frozen=True)
class DecisionParams:
    """The decision parameters in force."""

    threshold: float
    k: int
    n: int
    clear_ratio: float
    recede_ratio: float = 0.0
    refractory: int = 1800


class Decisions:
    """The alert decision for every sensor of one pipeline: one AlertMachine per sensor, the alert policy, and the
    parameters in force. The threshold is a command's (``set_threshold``), else the configured one, else the
    teach-in's, else the model's; k, n, clear_ratio and recede_ratio configured or the model's. A change of the
    parameters re-judges each machine's recent scores (``AlertMachine.retune``), never forgets them."""

    def __init__(self, counters: Counters, policy: AlertPolicy | None = None, *, threshold: float | None = None,
                 k: int | None = None, n: int | None = None, clear_ratio: float | None = None,
                 recede_ratio: float | None = None):
        self.counters = counters
        self.policy = policy or AlertPolicy()
        self._configured = (threshold, k, n, clear_ratio, recede_ratio)
        self._command_threshold: float | None = None
        self._spec: Any = None  # the model's decision defaults (a DecisionSpec)
        self._model_threshold = 1.0
        self._calibrated: float | None = None
        self.machines: dict[str, AlertMachine] = {}
        self._suppressed: set[str] = set()  # alert ids held back by the policy: their clear is not sent either
        self._held: dict[str, tuple[str, float, float]] = {}  # sensor -> (held-back alert id, held at, room at)
        self.resumed: dict[str, tuple[Any, float]] = {}  # sensor -> (its open alert kept, resumed at): agent.open_alerts
        self.params = DecisionParams(1.0, 1, 1, 1.0)

    def refresh(self, spec: Any, model_threshold: float, calibrated: float | None, forget: bool = False) -> None:
        """The model's decision defaults and threshold, and the teach-in's threshold (None: none); ``forget``: the
        machines forget their recent scores too (a new teach-in: scores of the old fit must not count towards k)."""
        self._spec, self._model_threshold, self._calibrated = spec, model_threshold, calibrated
        self._apply(self._params(self._command_threshold))
        if forget:
            self.forget_scores()

    def unfit(self, spec: Any) -> str | None:
        """Why the decision settings in force cannot run with a model's decision defaults ``spec`` (k > n once a
        configured value meets the model's), None when they can: checked before a model is swapped in."""
        _, k, n, _, _ = self._configured
        if (k or spec.k) <= (n or spec.n):
            return None
        return (f"decision k={k or spec.k} ({'EDGE_AGENT_DECISION__K' if k else 'its sidecar decision.k'}) exceeds "
                f"n={n or spec.n} ({'EDGE_AGENT_DECISION__N' if n else 'its sidecar decision.n'})")

    def _params(self, threshold: float | None) -> DecisionParams:
        t, k, n, ratio, recede = self._configured
        d = self._spec
        if threshold is None:
            threshold = t
        if threshold is None:
            threshold = self._calibrated if self._calibrated is not None else self._model_threshold
        return DecisionParams(threshold, k or d.k, n or d.n, ratio or d.clear_ratio,
                              d.recede_ratio if recede is None else recede, d.refractory)

    def _apply(self, params: DecisionParams) -> None:
        self.params = params
        for m in self.machines.values():
            m.retune(params.threshold, params.k, params.n, params.clear_ratio, params.recede_ratio, params.refractory)

    def natural_threshold(self) -> float:
        """The threshold without a command's override: configured, calibrated or the model's."""
        return self._params(None).threshold

    @property
    def command_threshold(self) -> float | None:
        """The threshold set by command, None when none is in force."""
        return self._command_threshold

    def set_threshold(self, threshold: float | None) -> bool:
        """Override the threshold (None: back to the natural one); False when that is already in force."""
        if threshold == self._command_threshold:
            return False
        self._command_threshold = threshold
        self._apply(self._params(threshold))
        return True

    def machine(self, sensor: str) -> AlertMachine:
        """The sensor's alert machine (a new one with the parameters in force for a new sensor)."""
        machine = self.machines.get(sensor)
        if machine is None:
            p = self.params
            machine = self.machines[sensor] = AlertMachine(sensor, p.threshold, p.k, p.n, p.clear_ratio,
                                                           p.recede_ratio, p.refractory)
        return machine

    def held_until(self, sensor: str) -> tuple[float, float] | None:
        """(held at, room at) of the alert on ``sensor`` held back by the policy while its fault is still on: a
        window ending at or after ``room at`` (or before ``held at``: the clock stepped back) must be judged, it
        may raise it; None when none is held back."""
        held = self._held.get(sensor)
        return None if held is None else held[1:]

    def judge(self, inf: Inference) -> tuple[Transition | None, bool]:
        """Feed one scored window: (the transition to report or None, whether a raise was suppressed)."""
        sensor = inf.window.sensor
        machine = self.machines.get(sensor) or self.machine(sensor)
        t = machine.update(inf)
        end = inf.window.end_ts
        if t is None:
            if self._held and sensor in self._held:
                return self._release(sensor, machine, inf), False
            return None, False
        if t.state == RAISED and not self.policy.allow(sensor, end):
            self._suppressed.add(t.alert_id)
            self._held[sensor] = (t.alert_id, end, self.policy.room_at(sensor, end))
            self.counters.inc("alerts.suppressed")
            log.warning("alert on %s suppressed by cooldown/rate limit (score %.4g): raised when the policy has room "
                        "if the fault is still on then", clip(sensor), inf.score)
            return None, True
        if t.state == CLEARED:
            if t.alert_id in self._suppressed:  # never sent: its clear does not start a cooldown either (a fault
                self._suppressed.discard(t.alert_id)  # that recurs a little faster than the cooldown would be
                self._held.pop(sensor, None)  # held back for ever)
                return None, False
            self.policy.cleared(sensor, end)
        self.counters.inc(f"alerts.{t.state}")
        return t, False

    def _release(self, sensor: str, machine: AlertMachine, inf: Inference) -> Transition | None:
        """The alert held back on ``sensor`` (its machine still raised: the fault is on), raised by this window when
        the policy has room now."""
        alert_id, since, until = self._held[sensor]
        end = inf.window.end_ts
        if since <= end < until:
            return None
        if not self.policy.allow(sensor, end):  # another sensor took the room: wait again
            self._held[sensor] = (alert_id, end, self.policy.room_at(sensor, end))
            return None
        del self._held[sensor]
        self._suppressed.discard(alert_id)
        self.counters.inc("alerts.raised")
        self.counters.inc("alerts.delayed")
        log.warning("alert on %s held back by cooldown/rate limit raised now: the fault is still on (score %.4g)",
                    clip(sensor), inf.score)
        return Transition(RAISED, alert_id, sensor, inf, machine.threshold, inf.score)

    def reset(self, sensor: str) -> None:
        """A hole in a sensor's data: its debounce starts again (an active alert stays)."""
        machine = self.machines.get(sensor)
        if machine is not None:
            machine.reset()

    def forget_scores(self) -> None:
        """Another model: the recent scores mean nothing against its threshold (active alerts stay)."""
        for m in self.machines.values():
            m.reset()

    def resume(self, sensor: str, alert_id: str, peak: float, kept: Any = None, at: float = 0.0) -> None:
        """An alert open before a restart: ``sensor``'s machine raised with its id (its clear comes as any);
        ``kept``, ``at``: what is kept of it and when (monotonic), until its sensor is heard (agent.open_alerts)."""
        self.machine(sensor).resume(alert_id, peak)
        self.resumed[sensor] = (kept, at)

    def active(self, sensor: str) -> bool:
        machine = self.machines.get(sensor)
        return machine is not None and machine.active

    def forget(self, sensor: str) -> None:
        """An idle sensor: drop its machine and policy state."""
        self.machines.pop(sensor, None)
        self.policy.forget(sensor)
        held = self._held.pop(sensor, None)
        if held is not None:
            self._suppressed.discard(held[0])
