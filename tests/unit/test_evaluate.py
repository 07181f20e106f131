"""``edge-agent evaluate``: the pure metric functions (table-driven) and a run on the real bundled model."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agent.bundled import demo_recording_path
from agent.counters import Counters
from agent.evaluate import (
    MATPLOTLIB_HINT,
    Confusion,
    FileMetrics,
    active_rows,
    alert_row,
    confusion,
    false_alert_flags,
    find_csvs,
    label_segments,
    main,
    plot_name,
    score_file,
    segment_results,
    table,
    totals,
)
from agent.sources.replay import read_recording

CHANNELS = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
            "Voltage", "Volume Flow RateRMS"]

# ------------------------------------------------------------------------------------------- pure metric functions

# labels, first_row, spans, ts step -> tp fp fn tn, f1, far, mar, segments, alerted, delays, false alerts
CASES = [
    pytest.param(
        [0, 0, 0, 1, 1, 1, 0, 0], 2, [(4, 7)], 1.0,
        (2, 1, 1, 2), 2 / 3, 1 / 3, 1 / 3, [(3, 6)], [True], [1.0], 0, id="raise-late-clear-late",
    ),
    pytest.param(
        [0, 1, 1, 0], 0, [], 1.0,
        (0, 0, 2, 2), 0.0, 0.0, 1.0, [(1, 3)], [False], [None], 0, id="missed",
    ),
    pytest.param(
        [0, 0, 0, 1, 1], 0, [(1, None)], 1.0,
        (2, 2, 0, 1), 2 / 3, 2 / 3, 0.0, [(3, 5)], [True], [0.0], 0, id="never-cleared-already-active",
    ),
    pytest.param(
        [0] * 10 + [1] * 5 + [0] * 5, 0, [(2, 4), (12, 17)], 2.0,
        (3, 4, 2, 11), 3 / 6, 4 / 15, 2 / 5, [(10, 15)], [True], [4.0], 1, id="false-then-true-2s-steps",
    ),
    pytest.param(
        [1, 1, 0, 0, 1, 1], 0, [(1, 5)], 1.0,
        (2, 2, 2, 0), 0.5, 1.0, 0.5, [(0, 2), (4, 6)], [True, True], [1.0, 0.0], 0, id="one-alert-two-segments",
    ),
    pytest.param(
        [1, 1, 1, 0, 0, 1], 2, [], 1.0,
        (0, 0, 2, 2), 0.0, 0.0, 1.0, [(2, 3), (5, 6)], [False, False], [None, None], 0, id="teach-in-rows-excluded",
    ),
    pytest.param(
        [0, 0, 0, 0], 0, [], 1.0,
        (0, 0, 0, 4), None, 0.0, None, [], [], [], 0, id="nothing-to-find",
    ),
    pytest.param(
        [0, 0, 0, 0, 1, 1], 0, [(0, 2), (2, 3)], 1.0,
        (0, 3, 2, 1), 0.0, 0.75, 1.0, [(4, 6)], [False], [None], 2, id="two-false-alerts",
    ),
]


@pytest.mark.parametrize("labels,first,spans,step,counts,f1,far,mar,segs,alerted,delays,false", CASES)
def test_metrics_table(labels, first, spans, step, counts, f1, far, mar, segs, alerted, delays, false):
    ts = [1000.0 + step * i for i in range(len(labels))]
    pred = active_rows(len(labels), spans)
    c = confusion(labels, pred, first)
    assert (c.tp, c.fp, c.fn, c.tn) == counts
    assert c.f1 == pytest.approx(f1) if f1 is not None else c.f1 is None
    assert c.far == pytest.approx(far) if far is not None else c.far is None
    assert c.mar == pytest.approx(mar) if mar is not None else c.mar is None
    assert label_segments(labels, first) == segs
    res = segment_results(segs, spans, ts, len(labels))
    assert [r.alerted for r in res] == alerted
    assert [r.delay_s for r in res] == delays
    assert sum(false_alert_flags(spans, labels)) == false
    m = score_file(labels, ts, spans, first)
    assert m.counts == c and m.false_alerts == false and m.scored_rows == len(labels) - first


def test_f1_is_the_usual_harmonic_mean():
    c = Confusion(tp=30, fp=10, fn=20, tn=40)
    p, r = 30 / 40, 30 / 50
    assert c.f1 == pytest.approx(2 * p * r / (p + r))


def test_active_rows_inclusive_raise_exclusive_clear():
    assert active_rows(6, [(1, 3), (4, None)]).tolist() == [False, True, True, False, True, True]


def test_delay_uses_the_first_alert_overlapping_the_segment_and_is_clamped():
    ts = [0, 1, 2, 3, 10, 11, 12]  # a gap: rows are matched by index, delays are timestamp differences
    labels = [0, 0, 0, 1, 1, 1, 0]
    (r,) = segment_results(label_segments(labels, 0), [(5, 7), (4, 5)], ts, 7)
    assert r.alerted and r.delay_s == 10 - 3
    # non-monotonic timestamps cannot give a negative delay
    (r,) = segment_results([(3, 6)], [(4, 6)], [0, 1, 2, 5, 4, 6], 6)
    assert r.delay_s == 0.0


def test_alert_row_maps_window_end_back_by_position():
    ts = [0, 1, 2, 2, 3, 5]
    assert alert_row(ts, 3, 4) == 4  # the emitting row itself
    assert alert_row(ts, 2, 2) == 2  # a duplicated timestamp: the first of the two (the one the pipeline took)
    assert alert_row(ts, 2, 4) == 2  # window_end before the emitting row: searched back
    assert alert_row(ts, 4, 5) == 4  # no row at exactly window_end: the last one before it


def test_totals_sum_counts_and_take_median_of_all_segments():
    a = score_file([0, 0, 1, 1, 0], [0, 1, 2, 3, 4], [(3, 5)], 0)  # tp1 fp1 fn1 tn2, delay 1
    b = score_file([0, 1, 1, 1, 0], [0, 1, 2, 3, 4], [(0, 1), (1, 3)], 0)  # false alert, delay 0
    c = score_file([0, 1, 0], [0, 1, 2], [], 0)  # missed
    t = totals([a, b, c])
    assert (t["tp"], t["fp"], t["fn"], t["tn"]) == (3, 2, 3, 5)
    assert t["f1"] == pytest.approx(3 / (3 + 2.5))
    assert t["far"] == pytest.approx(2 / 7) and t["mar"] == pytest.approx(3 / 6)
    assert (t["segments"], t["segments_alerted"], t["false_alerts"], t["alerts"]) == (3, 2, 1, 3)
    assert t["median_delay_s"] == 0.5


def test_table_is_aligned_with_a_total_row():
    m = score_file([0, 1, 1, 0], [0, 1, 2, 3], [(2, 4)], 0)
    row = {"file": "valve1/3.csv", "threshold": 1.2345, **totals([m])}
    text = table([row], totals([m]))
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["file", "rows", "thr", "TP"]
    assert lines[-1].startswith("TOTAL")
    assert len({len(line) for line in lines if set(line) <= {"-", " "}}) == 1
    assert "1/1" in lines[-1]


def test_plot_names_and_natural_file_order(tmp_path):
    assert plot_name("valve1/3.csv") == "valve1_3.png"
    assert plot_name("a/b/c.CSV") == "a_b_c.png"
    for name in ("10.csv", "2.csv", "1.csv", "notes.txt"):
        (tmp_path / "d").mkdir(exist_ok=True)
        (tmp_path / "d" / name).write_text("x")
    assert [p.name for p in find_csvs(tmp_path)] == ["1.csv", "2.csv", "10.csv"]


# ------------------------------------------------------------------------------------------- end to end

START = datetime(2020, 3, 9, 10, 0, 0, tzinfo=timezone.utc).timestamp()
CAL = 100
ROWS = 400
SEG = (200, 260)  # labelled rows [200, 260): Current stepped up by far more than its noise
DUP_ROW = 150  # a duplicated timestamp (as SKAB sometimes has): same time as the row before


def _row_ts(i: int) -> float:
    return START + (i if i < DUP_ROW else i - 1)


def _write_recording(path: Path) -> None:
    """400 real normal rows of SKAB (the bundled demo recording, valve1/1.csv rows 0..399, all labelled normal)
    re-timed 1 s apart with one duplicated timestamp, and a step of +3 A on Current (several times its spread)
    over the labelled segment."""
    normal = list(read_recording(demo_recording_path(), Counters()))[:ROWS]
    assert len(normal) == ROWS and all(r.values["anomaly"] == 0.0 for r in normal)
    lines = ["datetime;" + ";".join(CHANNELS) + ";anomaly;changepoint"]
    for i, r in enumerate(normal):
        v = {c: float(r.values[c]) for c in CHANNELS}
        label = int(SEG[0] <= i < SEG[1])
        if label:
            v["Current"] += 3.0
        t = datetime.fromtimestamp(_row_ts(i), timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(";".join([t] + [repr(v[c]) for c in CHANNELS] + [str(label), str(int(i == SEG[0]))]))
    path.write_text("\n".join(lines) + "\n")


def _epoch(iso_text: str) -> float:
    return datetime.fromisoformat(iso_text.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One evaluate run over a folder with the synthetic recording and an unlabelled CSV."""
    base = tmp_path_factory.mktemp("eval")
    data = base / "data"
    (data / "pump").mkdir(parents=True)
    _write_recording(data / "pump" / "step.csv")
    (data / "free.csv").write_text("datetime;Current\n2020-01-01 00:00:00;1.0\n")
    out = base / "out"
    rc = main(["--model", "pump-anomaly", "--data", str(data), "--calibration-samples", str(CAL), "--out", str(out)])
    return rc, out, json.loads((out / "summary.json").read_text())


def test_metrics_equal_a_hand_count_from_the_alerts(evaluated):
    rc, out, summary = evaluated
    assert rc == 0
    (f,) = summary["files"]
    assert f["file"] == "pump/step.csv"
    # the rule, by hand: row i (timestamp t) is predicted anomalous when raise.window_end <= t < clear.window_end
    spans = []
    for a in f["alert_details"]:
        end = _epoch(a["clear_window_end"]) if a["clear_window_end"] else float("inf")  # never cleared: to the end
        spans.append((_epoch(a["raise_window_end"]), end))
    tp = fp = fn = tn = 0
    for i in range(CAL, ROWS):
        t = _row_ts(i)
        predicted = any(start <= t < end for start, end in spans)
        anomalous = SEG[0] <= i < SEG[1]
        if predicted and anomalous:
            tp += 1
        elif predicted:
            fp += 1
        elif anomalous:
            fn += 1
        else:
            tn += 1
    assert (f["tp"], f["fp"], f["fn"], f["tn"]) == (tp, fp, fn, tn)
    assert tp > 0, "the step must be detected"
    assert f["f1"] == pytest.approx(tp / (tp + (fp + fn) / 2))
    assert f["far"] == pytest.approx(fp / (fp + tn))
    assert f["mar"] == pytest.approx(fn / (fn + tp))
    total = summary["total"]
    assert (total["tp"], total["fp"], total["fn"], total["tn"]) == (tp, fp, fn, tn)


def test_segment_alerted_with_the_delay_of_the_first_raise(evaluated):
    _, _, summary = evaluated
    (f,) = summary["files"]
    seg_start = _row_ts(SEG[0])
    seg_end = _row_ts(SEG[1] - 1)
    overlapping = [
        a for a in f["alert_details"]
        if _epoch(a["raise_window_end"]) <= seg_end
        and (a["clear_window_end"] is None or _epoch(a["clear_window_end"]) > seg_start)
    ]
    assert overlapping, "an alert must overlap the labelled segment"
    first = min(_epoch(a["raise_window_end"]) for a in overlapping)
    assert f["segments"] == 1 and f["segments_alerted"] == 1
    (seg,) = f["segment_details"]
    assert seg["start_row"] == SEG[0] and seg["alerted"]
    assert seg["delay_s"] == max(0.0, first - seg_start) == f["median_delay_s"]
    # a +3 A step is seen within one window length
    assert seg["delay_s"] <= 10
    # ... and once it is over the alert clears, so the hand count above covered the exclusive clear row too
    assert any(a["clear_window_end"] for a in overlapping), "the alert should clear after the step"
    false = [a for a in f["alert_details"] if not (_epoch(a["raise_window_end"]) <= seg_end and (
        a["clear_window_end"] is None or _epoch(a["clear_window_end"]) > seg_start))]
    assert f["false_alerts"] == len(false)


def test_outputs_written_and_reported(evaluated, capsys):
    _, out, summary = evaluated
    png = out / "pump_step.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["files"][0]["plot"] == "pump_step.png"
    text = (out / "summary.txt").read_text()
    assert "pump/step.csv" in text and "TOTAL" in text
    assert "skipped free.csv: no 'anomaly' column" in text
    assert summary["skipped"] == [{"file": "free.csv", "reason": "no 'anomaly' column"}]
    assert len(summary["model"]["sha256"]) == 64 and summary["model"]["runtime"]
    assert summary["calibration_samples"] == CAL
    assert {"k", "n", "clear_ratio", "threshold"} <= set(summary["decision"])
    f = summary["files"][0]
    assert f["teach_in_rows"] == CAL and f["rejected"] == {"duplicate_ts": 1}


def test_fresh_state_per_file_and_tables_without_matplotlib(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    _write_recording(data / "a.csv")
    _write_recording(data / "b.csv")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "out"
    assert main(["--model", "pump-anomaly", "--data", str(data), "--calibration-samples", str(CAL), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count(MATPLOTLIB_HINT) == 1
    assert "TOTAL" in captured.out
    a, b = json.loads((out / "summary.json").read_text())["files"]
    # the second file is taught in afresh, so it gives exactly the first file's results
    assert a["teach_in_rows"] == b["teach_in_rows"] == CAL
    assert a["threshold"] == b["threshold"]
    assert [(x["raise_row"], x["clear_row"]) for x in a["alert_details"]] == [
        (x["raise_row"], x["clear_row"]) for x in b["alert_details"]
    ]
    assert not list(out.glob("*.png"))
    # progress: one line per file when stderr is not a terminal
    assert "[1/2] a.csv: 400 rows" in captured.err and "[2/2] b.csv: 400 rows" in captured.err


# ------------------------------------------------------------------------------------------- bad arguments


def test_an_out_that_cannot_be_created_exits_1_before_any_file_is_run(tmp_path, capsys):
    """docs/evaluate.md: `1` the results could not be written, as export-feedback's --out (README); it exited 2."""
    (tmp_path / "a.csv").write_text("datetime;Current;anomaly\n2020-01-01 00:00:00;1.0;0\n")
    taken = tmp_path / "results"
    taken.write_text("an operator's file\n")
    assert main(["--model", "pump-anomaly", "--data", str(tmp_path / "a.csv"), "--out", str(taken)]) == 1
    captured = capsys.readouterr()
    assert f"evaluate: --out {taken}: cannot create" in captured.err
    assert "[1/1]" not in captured.err  # refused before running anything
    assert taken.read_text() == "an operator's file\n"


def test_no_labelled_csv_exits_2(tmp_path, capsys):
    (tmp_path / "free.csv").write_text("datetime;Current\n2020-01-01 00:00:00;1.0\n")
    assert main(["--model", "pump-anomaly", "--data", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no labelled CSV (with an 'anomaly' column)" in err
    assert "skipping free.csv" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--model", "pump-anomaly", "--data", str(empty)]) == 2
    assert "no *.csv found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["--model", "pump-anomaly", "--data", str(tmp_path / "nope")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert main(["--model", "pump-anomaly", "--data", str(tmp_path), "--calibration-samples", "-1"]) == 2
    assert main([]) == 2
    assert main(["--model", "pump-anomaly", "--data", str(tmp_path), "--model", str(tmp_path / "missing.tflite")]) == 2
    assert "model error" in capsys.readouterr().err


@pytest.mark.parametrize("args, env, expected", [
    (["--calibration-samples", "0"], "",
     "evaluate: --calibration-samples 0: the generic detector learns normal on site: teach-in cannot be off"),
    (["--model", "generic", "--calibration-samples", "5"], "",
     "evaluate: --calibration-samples 5: must cover at least the window and the debounce (10 + 5 readings)"),
    ([], "EDGE_AGENT_CALIBRATION__SAMPLES=0\n",
     "evaluate: EDGE_AGENT_CALIBRATION__SAMPLES=0: the generic detector learns normal on site"),
    (["--model", "pump-anomaly"], "EDGE_AGENT_DECISION__K=6\n",
     "evaluate: EDGE_AGENT_DECISION__K=6: must not exceed n (5, the model sidecar decision.n)"),
])
def test_unrunnable_settings_are_refused_in_one_line_with_exit_2(tmp_path, monkeypatch, capsys, args, env, expected):
    """What the daemon would refuse against the model (teach-in off for the generic detector, a teach-in shorter
    than window and debounce, k over n) is one line and exit 2, not a traceback nor every file skipped."""
    for k in [k for k in os.environ if k.startswith("EDGE_AGENT_")]:
        monkeypatch.delenv(k)
    _write_recording(tmp_path / "step.csv")
    extra = []
    if env:
        (tmp_path / "agent.env").write_text(env)
        extra = ["--env-file", str(tmp_path / "agent.env")]
    out = tmp_path / "out"
    for data in (["--data", str(tmp_path / "step.csv")], ["--normal", str(tmp_path / "step.csv")]):
        assert main([*data, "--out", str(out), "--no-plots", *args, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(expected) and err.count("\n") == 1, err
        assert not out.exists()


def test_totals_helper_counts_files():
    m = FileMetrics(rows=3, scored_rows=3, counts=Confusion(1, 0, 0, 2), segments=[], false_alerts=0, alerts=1)
    assert totals([m, m])["tp"] == 2


def test_env_file_overrides_decision(tmp_path, monkeypatch, capsys):
    for k in [k for k in os.environ if k.startswith("EDGE_AGENT_")]:
        monkeypatch.delenv(k)
    _write_recording(tmp_path / "step.csv")
    env = tmp_path / "agent.env"
    env.write_text("EDGE_AGENT_MODEL__THRESHOLD=1e9\nEDGE_AGENT_DECISION__K=2\nEDGE_AGENT_CALIBRATION__SAMPLES=50\n")
    out = tmp_path / "out"
    args = ["--model", "pump-anomaly", "--data", str(tmp_path / "step.csv"), "--out", str(out), "--no-plots", "--env-file", str(env)]
    assert main(args + ["--calibration-samples", str(CAL)]) == 0  # the option wins over the env file
    s = json.loads((out / "summary.json").read_text())
    assert s["decision"]["threshold"] == 1e9 and s["decision"]["threshold_source"] == "configured"
    assert s["decision"]["k"] == 2 and s["calibration_samples"] == CAL
    f = s["files"][0]
    assert f["alerts"] == 0 and f["tp"] == 0 and f["fn"] == SEG[1] - SEG[0]
    env.write_text("EDGE_AGENT_DECISION__K=nope\n")
    assert main(args) == 2
    assert "EDGE_AGENT_DECISION__K" in capsys.readouterr().err
