"""Same numbers out (issue #15): ``edge-agent evaluate`` on six SKAB recordings gives exactly the alert events and
per-window scores pinned in tests/data/evaluate_pin.json (written by ``python -m tests.evaluate_pin`` before the
pipeline was batched), for pump-anomaly and the generic detector, on both TFLite runtimes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.evaluate_pin import CONFIGS, FILES, FIXTURE, data_dir, evaluate_config

PINNED = json.loads(FIXTURE.read_text())


def test_the_pin_covers_both_models_both_runtimes_and_alerts():
    assert sorted(PINNED) == sorted(f"{m}/{rt}" for m, rt in CONFIGS)
    for key, files in PINNED.items():
        assert sorted(files) == sorted(FILES)
        assert sum(len(f["alerts"]) for f in files.values()) >= 6, key  # the pin has alerts to compare
        assert all(f["windows"] > 300 for f in files.values()), key


@pytest.mark.parametrize("model,runtime", CONFIGS)
def test_evaluate_gives_the_pinned_events_and_scores(model, runtime):
    got = evaluate_config(model, runtime)
    want = PINNED[f"{model}/{runtime}"]
    for name in FILES:
        assert got[name]["alerts"] == want[name]["alerts"], name
        assert got[name] == want[name], name


def test_the_command_writes_the_pinned_alerts(tmp_path):
    """The command itself (not only its API): summary.json's alert details are the pinned ones."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "evaluate", "--data", str(data_dir(tmp_path / "skab")), "--model", "pump-anomaly",
         "--runtime", "tflite_runtime", "--no-plots", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    want = PINNED["pump-anomaly/tflite_runtime"]
    assert sorted(e["file"] for e in summary["files"]) == sorted(FILES)
    for entry in summary["files"]:
        got = [{k: a[k] for k in ("raise_row", "raise_window_end", "clear_row", "clear_window_end", "score",
                                  "peak_score", "top_channels")} for a in entry["alert_details"]]
        assert got == want[entry["file"]]["alerts"], entry["file"]
