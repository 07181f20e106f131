"""Teach-in: the first readings after install are normal; fit the model's normal on site, persist it.

Runs on the pipeline thread. The raw normal readings and their data times are kept in
``STATE_DIR/calibration.npz`` beside the fitted result (``calibration.json``), so that a new model with the same
channels is calibrated from them at once instead of starting another teach-in, and so that operator feedback can
fold more normal data in:

* a teach-in is a number of readings (``samples``), a span of data time (``duration_s``), or both (both must be
  reached). A long one keeps at most ``MAX_ROWS`` readings, in evenly spread runs of ``CHUNK`` (memory is bounded
  whatever the sampling rate);
* before fitting, the two halves of the teach-in are checked against each other (:func:`agent.contamination.contamination`,
  for every model): a fault or a change of operating point inside the teach-in is reported (log, status,
  ``edge-agent calibrate``) and, when one half is consistent, only that half is fitted;
* a teach-in still running is kept in ``STATE_DIR/teach-in.npz`` every ``CHECKPOINT_S`` of wall time and at a
  clean stop (:meth:`Calibrator.checkpoint`), and resumed after a restart (a power cut on day 6 of a 7-day
  teach-in does not start it again); it is removed when the teach-in completes or is reset;
* ``fold(alert_id, rows)`` — an operator's ``false_positive`` label: the alert's readings are normal too, the model
  is refitted on teach-in + folded readings, persisted in ``calibration-feedback.npz``; ``unfold`` undoes it.

What is fitted (the :class:`Calibration` record, :func:`fit`, the scorer) is in agent/calibration.py; reading the
folds and the checkpoint back, and what becomes of an unusable file (set aside by the agent, reported and left in
place by a ``read_only`` Calibrator: ``edge-agent calibrate``), in agent/calibration_files.py; this module is the
:class:`Calibrator` (collecting, the store of the readings, feedback folds) and re-exports those names.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from agent.calibration import (Calibration, Detector, daily_channels, fit, make_scorer, parse_calibration,
                               sidecar_normaliser)
from agent.calibration_files import (Unusable, checkpoint_sources, read_checkpoint, read_folds, stored_times,
                                     write_folds)
from agent.files import atomic_write
from agent.logsafe import clip
from agent.parse import iso

__all__ = ["CHUNK", "MAX_FOLDED", "MAX_FOLD_ROWS", "MAX_ROWS", "Calibration", "Calibrator", "Detector",
           "daily_channels", "fit", "make_scorer", "parse_calibration", "sidecar_normaliser"]

log = logging.getLogger(__name__)

MAX_ROWS = 20_000  # readings kept from one teach-in (a 24 h teach-in at 10 Hz would be 864,000)
CHUNK = 256  # ... in runs of this many readings: every run, then every 2nd, 4th, ... (spread over the whole span)
MAX_FOLDED = 100  # alerts whose readings feedback may fold in; the oldest fold goes first
MAX_FOLD_ROWS = 2_000  # readings folded in per alert
CHECKPOINT_S = 600.0  # wall-clock seconds between two saves of a running teach-in (at most 20,000 rows: 1.6 MB at 8
# channels with their times, written 144 times over a day's teach-in rather than at every reading: an SD card wears)


class Calibrator:
    """Collects normal readings (a count, a duration or both), then fits and persists a Calibration; reloads it
    after a restart; folds in and out the readings of alerts that operators called false."""

    def __init__(self, model: Detector, samples: int, state_dir: Path, duration_s: float | None = None,
                 clock: str = "UTC", checkpoint_s: float = CHECKPOINT_S, read_only: bool = False,
                 sources: dict[str, list[str]] | None = None):
        self.model = model
        self.sources = sources  # the sensors of gathered channels (agent.gather): kept with the channels
        # read_only (``edge-agent calibrate``): no file is written, set aside or refitted over; an unusable one is
        # left in place and listed in self.unusable.found
        self.unusable = Unusable(read_only)
        self.samples = samples
        self.duration_s = duration_s or None
        self.clock = clock  # the time zone whose days a daily profile follows (agent/season.py)
        self.state_dir = Path(state_dir)
        self._json = self.state_dir / "calibration.json"
        self._npz = self.state_dir / "calibration.npz"
        self._fold_npz = self.state_dir / "calibration-feedback.npz"
        self._partial = self.state_dir / "teach-in.npz"  # a teach-in still running (checkpoint)
        self.checkpoint_s = checkpoint_s
        self._saved_at = time.monotonic()
        self._unsaved = False  # readings taken since the last checkpoint
        self.resumed = 0  # readings taken before a restart (a checkpoint), 0 when none
        self._rows: list[np.ndarray] = []
        self._ts: list[float] = []  # the rows' data times (NaN where a reading had none)
        self._runs: list[int] = []  # the run (of CHUNK readings taken) each kept row belongs to
        self._stride = 1  # rows are kept from every stride-th run; doubled whenever more than MAX_ROWS are kept
        self._seen = 0  # readings taken (more than kept when a long teach-in is thinned)
        self._first_ts: float | None = None
        self._last_ts: float | None = None
        self.result: Calibration | None = None
        if self.enabled:
            self.result = self._load()
            if self.result is None:
                self._resume()

    @property
    def enabled(self) -> bool:
        return self.samples > 0 or self.duration_s is not None

    @property
    def active(self) -> bool:
        """True while teach-in is collecting readings (no alert may be raised)."""
        return self.enabled and self.result is None

    @property
    def progress(self) -> float:
        if not self.active:
            return 1.0
        parts = []
        if self.samples > 0:
            parts.append(self._seen / self.samples)
        if self.duration_s is not None:
            span = 0.0 if self._first_ts is None or self._last_ts is None else self._last_ts - self._first_ts
            parts.append(span / self.duration_s)
        return max(0.0, min(1.0, min(parts)))

    @property
    def collected(self) -> int:
        return self._seen

    @property
    def elapsed_s(self) -> float:
        """Data time covered by the teach-in so far."""
        return 0.0 if self._first_ts is None or self._last_ts is None else self._last_ts - self._first_ts

    def add(self, values: np.ndarray, ts: float = math.nan) -> Calibration | None:
        """Take one normal vector; returns the Calibration when this one completed teach-in."""
        if not self.active:
            return None
        # readings from where the kept teach-in began (a recording replayed from its start) are not more of it; a
        # clock behind the last kept reading is not that: a gateway without a real-time clock boots after a power
        # cut with the time it last saved (fake-hwclock: hourly)
        if self.resumed and self._seen == self.resumed and self._first_ts is not None and ts <= self._first_ts:
            log.info("the teach-in kept before the restart began at %s and the readings start again at %s (a "
                     "recording replayed from its start?): it starts again", iso(self._first_ts), iso(ts))
            self._rows, self._ts, self._runs, self._stride = [], [], [], 1
            self._seen, self._first_ts, self._last_ts, self.resumed = 0, None, None, 0
        run = self._seen // CHUNK
        if run % self._stride == 0:
            self._rows.append(np.asarray(values, dtype=np.float64))
            self._ts.append(ts)
            self._runs.append(run)
        self._seen += 1
        self._unsaved = True
        if math.isfinite(ts):
            if self._first_ts is None:
                self._first_ts = ts
            self._last_ts = ts
        if len(self._rows) > MAX_ROWS:  # every other kept run goes: what stays is spread evenly over the teach-in
            self._stride *= 2
            keep = [k for k, r in enumerate(self._runs) if r % self._stride == 0]
            self._rows = [self._rows[k] for k in keep]
            self._ts = [self._ts[k] for k in keep]
            self._runs = [self._runs[k] for k in keep]
        if self.progress < 1.0:
            if self.checkpoint_s > 0 and time.monotonic() - self._saved_at >= self.checkpoint_s:
                self.checkpoint()
            return None
        normal = np.vstack(self._rows)
        times = np.asarray(self._ts, dtype=np.float64)
        self._rows, self._ts, self._runs, self._stride = [], [], [], 1
        self.result = self._sourced(fit(self.model, normal, ts=times, clock=self.clock))
        self._save(normal, times)
        self._partial.unlink(missing_ok=True)
        shaped = daily_channels(self.result, list(self.model.sidecar.channels))
        if shaped:
            log.info("teach-in: a daily profile for %s (%s days; taken out before scoring)", ", ".join(shaped), self.clock)
        return self.result

    def reset(self) -> int:
        """Start teach-in again (``edge-agent calibrate --reset``, the calibrate command); the files removed."""
        self._rows, self._ts, self._runs, self._stride = [], [], [], 1
        self._seen, self._first_ts, self._last_ts = 0, None, None
        self.result = None
        self.resumed, self._unsaved = 0, False
        removed = 0
        for p in (self._json, self._npz, self._fold_npz, self._partial):
            try:
                p.unlink()
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    # -- feedback --------------------------------------------------------------------------------------------

    def fold(self, alert_id: str, rows: np.ndarray,
             ts: np.ndarray | Sequence[float] | None = None) -> Calibration | None:
        """Take an alert's readings (at data times ``ts``, when known) as normal: refit on teach-in + every folded
        alert; None without a teach-in."""
        folds = self._read_folds()
        folds.pop(alert_id, None)
        rows = np.asarray(rows, dtype=np.float64)
        times = np.asarray(ts if ts is not None else [], dtype=np.float64).reshape(-1)
        if len(times) != len(rows):  # not given (or not one per reading): unknown, no daily profile from these
            times = np.full(len(rows), np.nan)
        folds[alert_id] = (rows[-MAX_FOLD_ROWS:], times[-MAX_FOLD_ROWS:])
        while len(folds) > MAX_FOLDED:
            folds.pop(next(iter(folds)))
        return self._refit(folds)

    def unfold(self, alert_id: str) -> Calibration | None:
        """Undo ``fold``; None when that alert was not folded in."""
        folds = self._read_folds()
        if folds.pop(alert_id, None) is None:
            return None
        return self._refit(folds)

    def _refit(self, folds: dict[str, tuple[np.ndarray, np.ndarray]]) -> Calibration | None:
        stored = self._read_normal()
        if stored is None or self.result is None:
            return None
        normal, times = stored
        self.result = self._sourced(fit(self.model, np.vstack([normal, *(r for r, _ in folds.values())]),
                                        folded=list(folds), ts=np.concatenate([times, *(t for _, t in folds.values())]),
                                        clock=self.clock))
        self._write_folds(folds)
        self.result.write(self._json)
        return self.result

    def _sourced(self, cal: Calibration) -> Calibration:
        """``cal`` with the gathered channels' sensors, stored with the channels they restrict."""
        return dataclasses.replace(cal, sources=self.sources) if self.sources is not None else cal

    def _read_normal(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The stored teach-in readings and their data times (NaN when stored without them)."""
        try:
            with np.load(self._npz, allow_pickle=False) as z:
                normal = np.asarray(z["normal"], dtype=np.float64)
                times = stored_times(z, len(normal))
        except Exception as e:  # noqa: BLE001 - numpy raises many kinds for a damaged file
            log.warning("teach-in readings in %s unreadable (%s): feedback cannot refit", self._npz, clip(e))
            return None
        if normal.ndim != 2 or normal.shape[1] != len(self.model.sidecar.channels) or not np.isfinite(normal).all():
            log.warning("teach-in readings in %s have the wrong shape: feedback cannot refit", self._npz)
            return None
        return normal, times

    def _read_folds(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return read_folds(self._fold_npz, len(self.model.sidecar.channels), self.unusable)

    def _write_folds(self, folds: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        write_folds(self._fold_npz, folds, len(self.model.sidecar.channels))

    # -- persistence -----------------------------------------------------------------------------------------

    def checkpoint(self) -> bool:
        """Keep a running teach-in's readings (``teach-in.npz``) so that a restart resumes it; every
        ``checkpoint_s`` from :meth:`add` and at a clean stop. Nothing to do when no reading came since the last.
        False when it could not be kept."""
        self._saved_at = time.monotonic()
        if not self.active or not self._unsaved or not self._rows:
            return True
        nan = math.nan
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.savez(buf, normal=np.vstack(self._rows), ts=np.asarray(self._ts, dtype=np.float64),
                     runs=np.asarray(self._runs, dtype=np.int64), channels=np.asarray(self.model.sidecar.channels),
                     sha256=np.asarray(self.model.sha256), sources=np.asarray(json.dumps(self.sources)),
                     counts=np.asarray([self._stride, self._seen], dtype=np.int64),
                     span=np.asarray([nan if self._first_ts is None else self._first_ts,
                                      nan if self._last_ts is None else self._last_ts], dtype=np.float64))
            atomic_write(self._partial, buf.getvalue())
            self._unsaved = False
            return True
        except OSError as e:
            log.warning("could not keep the running teach-in in %s (%s): a restart would resume it from where it "
                        "was last kept, if ever", self.state_dir, e)
            return False

    def _resume(self) -> None:
        """Take up a teach-in that a restart interrupted (its checkpoint), when it was for this model and channels."""
        channels = list(self.model.sidecar.channels)
        if not channels or not self._partial.is_file():  # a generic detector learns its channels first
            return
        cp = read_checkpoint(self._partial, channels, self.model.sha256, self.unusable)
        if cp is None:
            return
        self._rows, self._ts, self._runs = list(cp.normal), cp.ts.tolist(), cp.runs.tolist()
        self._stride, self._seen, self.resumed = cp.stride, cp.seen, cp.seen
        self._first_ts, self._last_ts = cp.first_ts, cp.last_ts
        log.info("teach-in resumed after a restart: %d readings%s already taken", cp.seen,
                 f" ({self.elapsed_s:.0f} s of data)" if self.elapsed_s else "")

    def _save(self, normal: np.ndarray, times: np.ndarray) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.savez(buf, normal=normal, ts=times, channels=np.asarray(self.model.sidecar.channels))
            atomic_write(self._npz, buf.getvalue())
            self._fold_npz.unlink(missing_ok=True)
            assert self.result is not None
            self.result.write(self._json)
        except OSError as e:
            log.warning("could not persist calibration in %s (%s): teach-in repeats after a restart", self.state_dir, e)

    def stored_channels(self) -> list[str] | None:
        """The channels of the stored calibration, else of a running teach-in's checkpoint, if any (a generic
        detector learns its channels from them); None from a file that cannot be used (they are gathered again)."""
        return self._stored()[0]

    def stored_sources(self) -> dict[str, list[str]] | None:
        """The sensors of each gathered channel, kept with :meth:`stored_channels` (its file); None when not kept
        (not gathered, or stored by a version before it: any sensor then fills a channel named like its value)."""
        return self._stored()[1]

    def _stored(self) -> tuple[list[str] | None, dict[str, list[str]] | None]:
        """(channels, sources) of calibration.json, else of teach-in.npz; (None, None) when neither can be used
        (none, or damaged: _load and _resume set it aside when they read it)."""
        try:
            cal = parse_calibration(self._json.read_bytes())
            return cal.channels or None, cal.sources
        except (OSError, ValueError):
            pass
        try:
            with np.load(self._partial, allow_pickle=False) as z:
                channels = [str(c) for c in z["channels"]] or None
                sources = checkpoint_sources(z)
        except Exception:  # noqa: BLE001 - none, or damaged (numpy raises many kinds)
            return None, None
        return channels, sources

    def kept_at(self) -> float | None:
        """When a running teach-in was last kept (its checkpoint's time, wall clock), None without one."""
        try:
            return self._partial.stat().st_mtime if self.resumed else None
        except OSError:
            return None

    def _load(self) -> Calibration | None:
        channels = list(self.model.sidecar.channels)
        try:
            cal = parse_calibration(self._json.read_bytes())
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("ignoring unreadable %s (%s): teach-in starts again", self._json, e.strerror)
            return None
        except ValueError as e:
            self.unusable(self._json, f"{clip(e, 200)}; teach-in starts again")
            return None
        if cal.model_sha256 == self.model.sha256 and cal.channels == channels:
            return cal
        # Another model: refit from the stored normal readings when they have the same channels.
        try:
            with np.load(self._npz, allow_pickle=False) as z:
                stored = [str(c) for c in z["channels"]]
                normal = np.asarray(z["normal"], dtype=np.float64)
                times = stored_times(z, len(normal))
        except Exception as e:  # noqa: BLE001 - numpy raises many kinds for a damaged file (zipfile, pickle, EOF)
            log.info("calibration was for another model and its readings are unreadable (%s): teach-in again", clip(e))
            return None
        if stored != channels:
            log.info("calibration was for other channels: teach-in starts again")
            return None
        if normal.ndim != 2 or normal.shape[1] != len(channels) or not np.isfinite(normal).all():
            self.unusable(self._npz, "stored normal readings of the wrong shape or not finite")
            return None
        stored_folds = self._read_folds()
        folds = [f for f in stored_folds.values() if f[0].ndim == 2 and f[0].shape[1] == len(channels)]
        if self.sources is None:
            self.sources = cal.sources  # the gathered channels' sensors stay with the channels (agent.gather)
        cal = self._sourced(fit(self.model, np.vstack([normal, *(r for r, _ in folds)]), folded=list(stored_folds),
                                ts=np.concatenate([times, *(t for _, t in folds)]), clock=self.clock))
        if not self.unusable.read_only:
            cal.write(self._json)
        log.info("calibrated model %s from %d stored normal readings", self.model.name, len(normal))
        return cal

