"""The pipeline of one asset: clean → window → (teach-in) → score → decide → typed events.

One object, no threads and no I/O except the calibration and evidence files: the daemon's pipeline thread and
``edge-agent evaluate`` drive the very same code, so evaluation measures what the daemon does. ``process``,
``tick`` and ``finish`` return typed events (``AlertEvent``, ``SummaryEvent``, ``AdviceEvent``; ``agent.messages``
turns them into MQTT messages) and leave a frozen ``snapshot`` of the state for the other threads.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from agent.advice import Advisor
from agent.align import Aligner
from agent.calibrate import Calibration, Calibrator, daily_channels, make_scorer
from agent.clean import Cleaner, CleaningPolicy
from agent.counters import Counters
from agent.decide import RAISED, Decisions, DecisionParams, Transition
from agent.evidence import EvidenceRecorder, EvidenceStore
from agent.gather import ChannelGather
from agent.health import LatencyRing
from agent.pipeline_block import drop_bad_blocks, process_block
from agent.pipeline_support import (alert_event, bind_channels, canary, forget_idle, learn, refuse_unrunnable,
                                    stored_channels)
from agent.records import BLOCK_MIN, AlertEvent, Block, Event, Inference, PipelineSnapshot, Reading
from agent.summary import Summaries
from agent.window import Windower

log = logging.getLogger(__name__)


class Pipeline:
    """Everything between a parsed Reading and the events of one asset. Runs on the pipeline thread."""

    def __init__(
        self, model: Any, counters: Counters, state_dir: Path, *, asset: str = "",
        summary_interval_s: float = 300.0, calibration_samples: int | None = None,
        calibration_duration_s: float | None = None, calibration_clock: str = "UTC", channels: list[str] | None = None,
        decisions: Decisions | None = None, evidence: EvidenceStore | None = None, evidence_windows_before: int = 5,
        evidence_inline_max_bytes: int = 0, cleaning: CleaningPolicy | None = None,
        clock: Callable[[], float] = time.monotonic, advisor: Advisor | None = None, live: bool = False,
    ):
        self.counters = counters
        self.asset = asset
        self.cleaning = cleaning or CleaningPolicy()
        self._clock = clock  # monotonic seconds: silence and idle sensors (a seam for tests)
        self.state_dir = Path(state_dir)
        self._calibration = (calibration_samples, calibration_duration_s, calibration_clock)
        self.decisions = decisions or Decisions(counters)
        self.model_override: dict[str, Any] | None = None  # set by reload-model: the model is not the configured one
        self.evidence = evidence
        self._evidence = (evidence_windows_before, evidence_inline_max_bytes)
        self.advisor = advisor
        self.latencies = LatencyRing()
        self._tally = counters.tally()  # counts made per window, by this pipeline's thread alone: no lock each
        self.recent: deque[np.ndarray] = deque(maxlen=32)  # raw windows, the canary for a model reload
        self.last_inference: Inference | None = None
        self._last_arrival = time.monotonic()
        self.snapshot = PipelineSnapshot()
        self._dirty = True  # something the snapshot shows changed since it was published
        self._cleaner_version = -1
        self._next_idle_check = clock() + min(60.0, self.cleaning.sensor_idle_s / 10)
        self.summaries = Summaries([], summary_interval_s, counters)
        self.model = model
        self.cleaner: Cleaner | None = None  # None until the channels are known (a generic detector learns them)
        self.aligner: Aligner | None = None
        self.gather = ChannelGather(self.cleaning.align_period_s, clock, live)  # a generic detector's channels
        self.recorder: EvidenceRecorder | None = None
        self.scorer: Any = None
        if getattr(model, "needs_channels", False):
            known = channels or stored_channels(self, model)  # with the sensors of each, when gathered
            if known:
                model = model.with_channels(known)
        if getattr(model, "needs_channels", False):
            self.calibrator = self._new_calibrator(model)  # stages are built at the first reading, from its channels
            self.decisions.refresh(model.sidecar.decision, model.sidecar.threshold, None)
        else:
            self._install(model)
        self._publish()

    # -- model, stages, calibration --------------------------------------------------------------------------

    def _new_calibrator(self, model: Any) -> Calibrator:
        sc = model.sidecar
        samples, duration, clock = self._calibration
        samples = sc.calibration.samples if samples is None else samples
        if duration and self._calibration[0] is None:
            samples = 0  # a duration replaces the sidecar's count; the window still needs its readings
        if duration:
            samples = max(samples, sc.window.length * 2 + sc.decision.n)
        return Calibrator(model, samples, self.state_dir, duration, clock, sources=self.gather.sources)

    def _install(self, model: Any) -> None:
        """Set up every model-dependent stage (at start and on a model swap); a model that cannot run here raises
        ModelError before anything is replaced."""
        calibrator = self._new_calibrator(model)
        refuse_unrunnable(self, model, calibrator)
        sc = model.sidecar
        old = self.model if self.cleaner is not None else None
        same_shape = old is not None and old.sidecar.channels == sc.channels and old.sidecar.window == sc.window
        self.model = model
        self.summaries.renew(list(sc.channels))  # the scores from here on are the new model's
        if not same_shape:
            cp = self.cleaning
            self.cleaner = cleaner = Cleaner(
                sc.channels, sc.valid_ranges, self.counters, ranges=cp.ranges, max_hold_s=cp.max_hold_s,
                spike_window=cp.spike_window, spike_sigmas=cp.spike_sigmas, on_reset=self._reset_sensor,
                missing_counter="gap.missing_channel" if cp.align_period_s > 0 else "reject.missing_channel",
                max_time_jump_s=cp.max_time_jump_s, max_sensors=cp.max_sensors, idle_s=cp.sensor_idle_s,
                on_time_step=self._time_step, clock=self._clock,
            )
            self.aligner = Aligner(
                sc.channels, cp.align_period_s, cp.align_tolerance_s, cp.align_sensor, self.counters,
                max_time_jump_s=cp.max_time_jump_s, clock=self._clock, on_time_step=cleaner.time_stepped,
                sources=self.gather.sources,  # the sensors of gathered channels (agent.gather)
            ) if cp.align_period_s > 0 else None
            self.windower = Windower(sc.window.length, sc.window.hop, len(sc.channels))
            before, inline = self._evidence
            if self.evidence is not None:
                self.recorder = EvidenceRecorder(self.evidence, sc.channels, sc.window.length + before * sc.window.hop,
                                                 inline)
        else:
            self.cleaner.ranges_from(sc.valid_ranges)  # type: ignore[union-attr]
        self.calibrator = calibrator
        self.scorer = make_scorer(model, self.calibrator.result)
        self.decisions.refresh(sc.decision, sc.threshold, self._calibrated_threshold(self.calibrator.result))
        if self.calibrator.result is not None and self.calibrator.result.warning:
            log.warning("teach-in: %s", self.calibrator.result.warning)
        self._dirty = True

    @staticmethod
    def _calibrated_threshold(cal: Calibration | None) -> float | None:
        return cal.threshold if cal is not None else None

    def _apply(self, cal: Calibration) -> None:
        """A new calibration (teach-in done, feedback folded in)."""
        self.scorer = make_scorer(self.model, cal, previous=self.scorer)
        self.decisions.refresh(self.model.sidecar.decision, self.model.sidecar.threshold, cal.threshold)
        self._dirty = True

    @property
    def params(self) -> DecisionParams:
        return self.decisions.params

    @property
    def machines(self) -> dict[str, Any]:
        return self.decisions.machines

    @property
    def command_threshold(self) -> float | None:
        return self.decisions.command_threshold

    def natural_threshold(self) -> float:
        """The threshold without a command's override: configured, calibrated or the model's."""
        return self.decisions.natural_threshold()

    def set_threshold(self, threshold: float | None) -> float:
        """Override the threshold (None: back to the natural one); returns the threshold in force. Setting what is
        already in force changes nothing (no re-judging, no new snapshot)."""
        if self.decisions.set_threshold(threshold):
            self._publish()
        return self.params.threshold

    def recalibrate(self) -> None:
        """Start teach-in again (the calibrate command)."""
        self.calibrator.reset()
        self.scorer = make_scorer(self.model, None)
        self.decisions.refresh(self.model.sidecar.decision, self.model.sidecar.threshold, None, forget=True)
        self._publish()

    def swap_model(self, model: Any, override: dict[str, Any] | None = None) -> None:
        """Run ``model`` from the next reading on (between two windows: no reading is dropped). ``override``
        describes a model set by command (shown in status and stats), None for the configured one. The alert
        machines forget their recent scores (another model's scores mean nothing against this model's threshold);
        an active alert stays active. A generic detector takes over the channels in use."""
        if getattr(model, "needs_channels", False):
            model = model.with_channels(list(self.model.sidecar.channels))
        self._install(model)
        self.decisions.forget_scores()
        self.recent.clear()
        self.model_override = override
        self._publish()

    def canary(self, model: Any) -> str | None:
        """Score the recent windows with ``model``; None when sane, else why not (agent.pipeline_feedback)."""
        return canary(self, model)

    def learn(self, alert_id: str, label: str) -> dict[str, Any]:
        """An operator's label folded into (or out of) the normal model; returns what changed
        (agent.pipeline_feedback)."""
        return learn(self, alert_id, label)

    # -- the snapshot other threads read ---------------------------------------------------------------------

    @property
    def calibrating(self) -> bool:
        return self.calibrator.active

    @property
    def stale_channels(self) -> frozenset[str]:
        """Channels now stale (``sensor/channel``), as last published."""
        return self.snapshot.stale_channels

    def overrides(self) -> dict[str, Any]:
        """What a command changed and is still in force (status and stats show it)."""
        out: dict[str, Any] = {}
        if self.decisions.command_threshold is not None:
            out["threshold"] = self.decisions.command_threshold
        if self.model_override is not None:
            out["model"] = self.model_override
        return out

    def _publish(self) -> None:
        """Replace the snapshot other threads read (pipeline thread only)."""
        cal, m, cleaner = self.calibrator, self.model, self.cleaner
        self._cleaner_version = cleaner.version if cleaner is not None else -1
        self._dirty = False
        result = cal.result
        self.snapshot = PipelineSnapshot(
            calibrating=self.calibrating, calibration_collected=cal.collected, calibration_samples=cal.samples,
            calibration_duration_s=cal.duration_s, calibration_elapsed_s=cal.elapsed_s,
            calibration_warning=result.warning if result is not None else None,
            calibration_folded=len(result.folded) if result is not None else 0,
            calibration_fitted_at=result.fitted_at if result is not None else None,
            calibration_daily=daily_channels(result, list(m.sidecar.channels)),
            threshold=self.params.threshold, overrides=self.overrides(),
            stale_channels=cleaner.stale if cleaner is not None else frozenset(),
            sensors=cleaner.sensor_count if cleaner is not None else 0,
            model={**m.describe(), "runtime": m.runtime, "runtime_version": m.runtime_version},
        )

    def _publish_if_changed(self) -> None:
        if self._dirty or (self.cleaner is not None and self.cleaner.version != self._cleaner_version):
            self._publish()

    # -- sensors ---------------------------------------------------------------------------------------------

    def _reset_sensor(self, sensor: str) -> None:
        """A hole in the data: no window may span it and the debounce starts again (an active alert stays)."""
        self.windower.reset(sensor)
        self.decisions.reset(sensor)

    def _time_step(self, sensor: str, delta_s: float) -> None:
        """A sensor's clock stepped and was taken as its new time base. With one sensor, summary periods follow it
        (else a clock stepped back an hour would hold the next summary back an hour); with several, the others
        keep the periods going."""
        s = self.summaries.summariser
        if self.cleaner is not None and self.cleaner.sensor_count == 1 and s.period_start is not None \
                and s.last_ts is not None:
            s.period_start += delta_s
            s.last_ts += delta_s

    def _forget_idle(self) -> None:
        if self._clock() >= self._next_idle_check:  # agent.pipeline_support
            forget_idle(self)

    # -- the stream ------------------------------------------------------------------------------------------

    def process(self, r: Reading) -> list[Event]:
        """One reading in; the alerts, advice and summaries it causes out."""
        if self.cleaner is None:
            bind_channels(self, r)  # a generic detector's channels, once the readings name them (agent.gather)
            if self.cleaner is None:
                self.counters.inc("reject.no_channels")
                return []
        now = self._clock()  # the cleaner's clock too (one read per reading)
        if self.cleaning.sensor_idle_s > 0 and now >= self._next_idle_check:  # _forget_idle, first: a new sensor
            forget_idle(self)  # may take the place of an idle one
        if self.aligner is None:
            out = self._process(r, now)
        else:
            out = [e for a in self.aligner.add(r) for e in self._process(a)]
        if self._dirty or self.cleaner.version != self._cleaner_version:  # _publish_if_changed (a call per reading)
            self._publish()
        return out

    @property
    def batchable(self) -> bool:
        """True when ``process_block`` may take rows in bulk: stages built, no aligner, no spike filter, teach-in
        over, a scorer, summaries by period."""
        c = self.cleaner
        return (c is not None and self.aligner is None and not c.spike_window and not self.calibrator.active
                and self.scorer is not None and self.summaries.summariser.interval_s > 0)

    def process_block(self, items: Sequence[Reading | Block]) -> list[Event]:
        """Consecutive readings and blocks of this asset in; the events they cause out: the same as ``process`` on
        each reading in turn (a Block's rows are readings, NaN where the source had no number: ``not_finite``),
        most rows cleaned, windowed and scored at once (agent.pipeline_block); fewer than ``BLOCK_MIN`` readings go
        reading by reading, which is cheaper for them."""
        if len(items) == 1 and type(items[0]) is Reading:
            return self.process(items[0])
        if any(type(it) is Block for it in items):
            items = drop_bad_blocks(items, self.counters)
        if self.cleaning.sensor_idle_s > 0:
            self._forget_idle()
        if not self.batchable or sum(len(it) if type(it) is Block else 1 for it in items) < BLOCK_MIN:
            out: list[Event] = []
            for item in items:
                for r in item.rows() if type(item) is Block else (item,):
                    out.extend(self.process(r))
            return out
        out = process_block(self, items)
        self._publish_if_changed()
        return out

    def _process(self, r: Reading, now: float | None = None) -> list[Event]:
        out: list[Event] = []
        v = self.cleaner.clean(r, now)  # type: ignore[union-attr]
        if v is None:
            return out
        summariser = self.summaries.summariser
        if summariser.due(v.ts):
            out.append(self._summary(v.ts))
        summariser.add_vector(v)
        self._last_arrival = time.monotonic()
        if self.recorder is not None:  # the raw readings behind an alert, kept only where evidence is stored
            self.recorder.add(v.sensor, v.ts, v.values)
        win = self.windower.push(v)
        if self.calibrator.result is None and self.calibrator.active:  # a result: not active (two properties less)
            self._dirty = True  # teach-in progress
            cal = self.calibrator.add(v.values, v.ts)
            if cal is not None:
                self._apply(cal)
                log.info("teach-in done after %d readings: threshold %.4g", self.calibrator.collected,
                         self.params.threshold)
                if cal.warning:
                    log.warning("teach-in: %s", cal.warning)
            return out
        if win is None or self.scorer is None:
            return out
        if self.scorer.timed:  # a daily profile: the scorer needs the time of day (agent/season.py)
            score, contributions, latency = self.scorer.score(win.data, win.sensor, win.start_ts, win.end_ts)
        else:
            score, contributions, latency = self.scorer.score(win.data, win.sensor)
        inf = Inference(win, score, contributions, latency)
        self.last_inference = inf
        self.latencies.add(latency)
        self.recent.append(win.data)
        self._tally.inc("pipeline.windows")
        summariser.add_score(score)
        t, suppressed = self.decisions.judge(inf)
        if suppressed:
            summariser.suppressed += 1
        if t is None:
            return out
        alert = self._alert(t)
        out.append(alert)
        if t.state == RAISED and self.advisor is not None:  # advice for a person, from the same model (agent/advice.py)
            advice = self.advisor.advise(self.scorer, win, alert.alert_id, score, t.threshold, self.asset)
            if advice is not None:
                out.append(advice)
        return out

    def tick(self, mono_now: float | None = None, connected: bool = True) -> list[Event]:
        """Periodic work while a live sensor is silent: close a summary period that is over (``connected``: its source).

        Data time goes on from the last reading's timestamp by the monotonic time elapsed since it arrived, so a
        device whose clock is off (or that replays old data) neither closes periods early nor jumps time.
        """
        if self.cleaner is not None:
            self.cleaner.check_silence(connected)
            if self.cleaning.sensor_idle_s > 0:
                self._forget_idle()
        self._publish_if_changed()
        s = self.summaries.summariser
        if s.last_ts is None:
            return []
        data_now = s.last_ts + ((time.monotonic() if mono_now is None else mono_now) - self._last_arrival)
        return [self._summary(data_now)] if s.due(data_now) else []

    def finish(self) -> list[Event]:
        """The last aligned readings and the final summary (end of a replay, shutdown)."""
        out = [e for a in self.aligner.flush() for e in self._process(a)] if self.aligner is not None else []
        if self.calibrator.active and self.calibrator.collected:  # kept: the next start resumes it
            log.info("teach-in not finished: %d readings taken (%.0f %%)%s", self.calibrator.collected,
                     100 * self.calibrator.progress, ", kept for the next start" if self.calibrator.checkpoint() else "")
        out.append(self._summary(None, final=True))
        self._publish_if_changed()
        return out

    # -- events ----------------------------------------------------------------------------------------------

    def _alert(self, t: Transition) -> AlertEvent:
        return alert_event(self, t)

    def _summary(self, end_ts: float | None, final: bool = False) -> Any:
        return self.summaries.take(
            end_ts, final=final, model={"name": self.model.name, "version": self.model.version},
            calibrating=self.calibrating, threshold=self.params.threshold,
            stale=self.cleaner.stale if self.cleaner is not None else frozenset(),
            normaliser=getattr(self.scorer, "normaliser", None), asset=self.asset,
        )

