"""A teach-in interrupted by a restart (a power cut, an upgrade, a reboot) is resumed from its checkpoint
(``STATE_DIR/teach-in.npz``) and fits exactly what an uninterrupted one fits; a checkpoint of another model or of
other channels, or a damaged one, starts the teach-in again (agent/calibrate.py)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import agent.calibrate as calibrate
from agent.calibrate import Calibrator
from agent.detectors import open_model


def _model(channels=("a", "b")):
    return open_model("generic").with_channels(list(channels))


def _data(n: int, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = np.c_[20 + np.cumsum(rng.normal(0, 0.05, n)), 3 + rng.normal(0, 0.2, n)]
    return rows, 1_700_000_000.0 + 60.0 * np.arange(n)


def _feed(cal: Calibrator, rows: np.ndarray, ts: np.ndarray, start: int):
    for i in range(start, len(rows)):
        done = cal.add(rows[i], float(ts[i]))
        if done is not None:
            return i, done
    return None, None


@pytest.mark.parametrize("max_rows", [calibrate.MAX_ROWS, 600])  # 600: the long teach-in's thinning across it
def test_a_resumed_teach_in_fits_what_an_uninterrupted_one_fits(tmp_path, monkeypatch, max_rows, caplog):
    monkeypatch.setattr(calibrate, "MAX_ROWS", max_rows)
    caplog.set_level(logging.INFO)
    rows, ts = _data(2000)
    whole = Calibrator(_model(), 2000, tmp_path / "whole", checkpoint_s=0)
    end_whole, want = _feed(whole, rows, ts, 0)

    first = Calibrator(_model(), 2000, tmp_path / "cut", checkpoint_s=0)
    _feed(first, rows[:1300], ts[:1300], 0)
    first.checkpoint()  # what the periodic save leaves on disk ...
    _feed(first, rows[:1350], ts[:1350], 1300)  # ... and 50 readings after it, lost with the power
    assert (tmp_path / "cut" / "teach-in.npz").is_file()
    del first

    again = Calibrator(_model(), 2000, tmp_path / "cut", checkpoint_s=0)
    assert again.active and again.collected == again.resumed == 1300 and again.progress == pytest.approx(0.65)
    assert "teach-in resumed after a restart: 1300 readings" in caplog.text
    end, got = _feed(again, rows, ts, 1300)
    assert end == end_whole == 1999 and got.samples == want.samples
    assert got.params == want.params and got.threshold == want.threshold  # the same fit, bit for bit
    assert not (tmp_path / "cut" / "teach-in.npz").exists()  # done: the checkpoint goes, calibration.json stays
    assert Calibrator(_model(), 2000, tmp_path / "cut").result.params == want.params


def test_a_teach_in_given_as_a_duration_keeps_its_span_across_the_restart(tmp_path):
    rows, ts = _data(200)  # a reading a minute; the teach-in: an hour of data
    first = Calibrator(_model(), 0, tmp_path, duration_s=3600.0, checkpoint_s=0)
    _feed(first, rows[:30], ts[:30], 0)
    first.checkpoint()
    again = Calibrator(_model(), 0, tmp_path, duration_s=3600.0, checkpoint_s=0)
    assert again.elapsed_s == 29 * 60.0 and again.progress == pytest.approx(29 / 60)
    end, done = _feed(again, rows, ts, 30)
    assert end == 60 and done.samples == 61  # the whole hour, both ends included: as without the restart


def test_the_running_teach_in_is_saved_every_checkpoint_s(tmp_path):
    rows, ts = _data(20)
    cal = Calibrator(_model(), 400, tmp_path, checkpoint_s=1e-9)  # every reading
    _feed(cal, rows[:7], ts[:7], 0)
    assert Calibrator(_model(), 400, tmp_path).resumed == 7
    off = Calibrator(_model(), 400, tmp_path / "off", checkpoint_s=0)  # 0: only when asked (a clean stop)
    _feed(off, rows[:7], ts[:7], 0)
    assert not (tmp_path / "off" / "teach-in.npz").exists()


@pytest.mark.parametrize("other", ["channels", "model"])
def test_a_checkpoint_of_other_channels_or_another_model_starts_the_teach_in_again(tmp_path, other, caplog):
    caplog.set_level(logging.INFO)
    rows, ts = _data(50)
    first = Calibrator(_model(), 400, tmp_path, checkpoint_s=0)
    _feed(first, rows, ts, 0)
    first.checkpoint()
    model = _model(("a", "c")) if other == "channels" else open_model("pump-anomaly")
    again = Calibrator(model, 400, tmp_path, checkpoint_s=0)
    assert again.active and again.collected == 0 and again.resumed == 0 and "starts again" in caplog.text


@pytest.mark.parametrize("content", [b"", b"not a zip", b"PK\x03\x04" + b"\x00" * 100])
def test_a_damaged_checkpoint_is_set_aside_and_the_teach_in_starts_again(tmp_path, content, caplog):
    caplog.set_level(logging.WARNING)
    (tmp_path / "teach-in.npz").write_bytes(content)
    cal = Calibrator(_model(), 400, tmp_path)
    assert cal.active and cal.collected == 0
    assert not (tmp_path / "teach-in.npz").exists() and list(tmp_path.glob("teach-in.npz.corrupt-*"))
    assert "moved aside" in caplog.text


def test_a_reset_forgets_the_running_teach_in(tmp_path):
    rows, ts = _data(50)
    cal = Calibrator(_model(), 400, tmp_path, checkpoint_s=0)
    _feed(cal, rows, ts, 0)
    cal.checkpoint()
    cal.reset()
    assert not (tmp_path / "teach-in.npz").exists() and cal.collected == 0
    assert Calibrator(_model(), 400, tmp_path).collected == 0


def test_readings_that_start_again_before_the_checkpoint_start_the_teach_in_again(tmp_path, caplog):
    """A recording replayed from its start after the restart: its readings are those the checkpoint holds, not
    more of the teach-in; it starts again (else the teach-in would hold them twice and end early)."""
    caplog.set_level(logging.INFO)
    rows, ts = _data(600)
    first = Calibrator(_model(), 400, tmp_path, checkpoint_s=0)
    _feed(first, rows[:300], ts[:300], 0)
    first.checkpoint()
    again = Calibrator(_model(), 400, tmp_path, checkpoint_s=0)
    assert again.resumed == 300
    end, _ = _feed(again, rows, ts, 0)  # from the first reading again
    assert end == 399 and "a recording replayed from its start?" in caplog.text


def test_a_clock_behind_the_last_reading_kept_resumes_the_teach_in(tmp_path, caplog):
    """A gateway without a real-time clock boots after a power cut with the time it last saved (fake-hwclock:
    hourly), so the first reading after it is older than the last one kept: that is not a replay from the start,
    the teach-in goes on (before: it started again, and a 7-day teach-in lost its 6 days)."""
    caplog.set_level(logging.INFO)
    rows, ts = _data(600)  # a reading a minute
    first = Calibrator(_model(), 500, tmp_path, checkpoint_s=0)
    _feed(first, rows[:300], ts[:300], 0)
    first.checkpoint()
    again = Calibrator(_model(), 500, tmp_path, checkpoint_s=0)
    behind = ts - 20 * 60.0  # the clock 20 minutes behind the last reading kept
    end, _ = _feed(again, rows, behind, 300)
    assert end == 499 and again.collected == 500 and "starts again" not in caplog.text
