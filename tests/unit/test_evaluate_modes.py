"""``edge-agent evaluate``: per-family/folder groups, the long-normal-operation mode and the programmatic API, on
the real bundled model through the daemon's pipeline."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from agent.assets import build_pipeline
from agent.evaluate import (
    Evaluation,
    apply_overrides,
    default_settings,
    evaluate_files,
    group_totals,
    main,
    normal_metrics,
    score_file,
)
from tests.unit.test_evaluate import CAL, CHANNELS, SEG, START, _write_recording

BUMPS = ((180, 220), (300, 340))  # rows of the normal recording with Current raised by 3 A


def _write_normal(path: Path, rows: list, label_column: bool = False) -> None:
    """The demo recording's first 400 (normal) rows, 1 s apart, with two +3 A bumps on Current and no labels."""
    lines = ["datetime;" + ";".join(CHANNELS) + (";anomaly" if label_column else "")]
    for i, r in enumerate(rows[:400]):
        v = {c: float(r.values[c]) for c in CHANNELS}
        if any(a <= i < b for a, b in BUMPS):
            v["Current"] += 3.0
        t = datetime.fromtimestamp(START + i, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(";".join([t] + [repr(v[c]) for c in CHANNELS] + (["0"] if label_column else [])))
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------- groups


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """Four copies of the step recording in SKAB-like folders plus one in a folder no family names."""
    base = tmp_path_factory.mktemp("groups")
    data = base / "data"
    for rel in ("valve1/1.csv", "valve1/2.csv", "other/1.csv", "other/5.csv", "mine/x.csv"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        _write_recording(data / rel)
    return data, base


def test_group_by_family_reports_each_family_and_pooled_is_their_sum(grouped, capsys):
    data, base = grouped
    out = base / "fam"
    assert main(["--model", "pump-anomaly", "--data", str(data), "--calibration-samples", str(CAL), "--out", str(out), "--no-plots",
                 "--group-by", "family"]) == 0
    captured = capsys.readouterr()
    assert "warning: mine/x.csv: no family matches it, grouped under its folder 'mine'" in captured.err
    s = json.loads((out / "summary.json").read_text())
    assert s["group_by"] == "family"
    groups = {g["group"]: g for g in s["groups"]}
    assert {k: v["files"] for k, v in groups.items()} == {
        "mine": ["mine/x.csv"], "leak-addition": ["other/1.csv"], "rotor-imbalance": ["other/5.csv"],
        "valve1": ["valve1/1.csv", "valve1/2.csv"],
    }
    total = s["total"]
    for key in ("tp", "fp", "fn", "tn", "segments", "segments_alerted", "false_alerts", "alerts", "scored_rows"):
        assert sum(g[key] for g in s["groups"]) == total[key], key
    by_file = {f["file"]: f for f in s["files"]}
    v = groups["valve1"]
    assert v["tp"] == by_file["valve1/1.csv"]["tp"] + by_file["valve1/2.csv"]["tp"]
    assert v["f1"] == pytest.approx(v["tp"] / (v["tp"] + (v["fp"] + v["fn"]) / 2))
    assert v["false_alerts_per_file"] == pytest.approx(v["false_alerts"] / 2)
    assert total["false_alerts_per_file"] == pytest.approx(total["false_alerts"] / 5)
    text = (out / "summary.txt").read_text()
    assert "per family:" in text and "POOLED" in text and "false/file" in text
    assert [line.split()[0] for line in text.split("per family:")[1].splitlines()[3:7]] == [
        "mine", "leak-addition", "rotor-imbalance", "valve1"]


def test_group_by_folder_and_a_families_file(grouped, capsys):
    data, base = grouped
    out = base / "folder"
    assert main(["--model", "pump-anomaly", "--data", str(data), "--calibration-samples", str(CAL), "--out", str(out), "--no-plots",
                 "--group-by", "folder"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert [(g["group"], len(g["files"])) for g in s["groups"]] == [("mine", 1), ("other", 2), ("valve1", 2)]
    fam = base / "fam.toml"
    fam.write_text('[families]\n"*/1.csv" = "ones"\n"valve1/*" = "valves"\n')
    capsys.readouterr()
    assert main(["--model", "pump-anomaly", "--data", str(data), "--calibration-samples", str(CAL), "--out", str(out), "--no-plots",
                 "--group-by", "family", "--families", str(fam)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert {g["group"]: g["files"] for g in s["groups"]} == {
        "mine": ["mine/x.csv"], "ones": ["other/1.csv", "valve1/1.csv"], "other": ["other/5.csv"],
        "valves": ["valve1/2.csv"]}
    assert s["families"] == [["*/1.csv", "ones"], ["valve1/*", "valves"]]
    assert "grouped under its folder 'other'" in capsys.readouterr().err
    fam.write_text('[families]\n"*/1.csv" = 1\n')
    assert main(["--model", "pump-anomaly", "--data", str(data), "--out", str(out), "--group-by", "family", "--families", str(fam)]) == 2
    assert "every entry must be a glob = a non-empty family name" in capsys.readouterr().err


def test_group_totals_pure():
    a = score_file([0, 1, 1, 0], [0, 1, 2, 3], [(2, 4)], 0)
    b = score_file([0, 1, 0, 0], [0, 1, 2, 3], [(3, 4)], 0)  # missed, one false alert
    c = score_file([1, 1, 0, 0], [0, 1, 2, 3], [(0, 2)], 0)
    g = group_totals(["x", "y", "x"], [a, b, c], ["a", "b", "c"])
    assert [(r["group"], r["files"]) for r in g] == [("x", ["a", "c"]), ("y", ["b"])]
    assert (g[0]["tp"], g[0]["fp"], g[0]["fn"], g[0]["tn"]) == (3, 1, 1, 3)
    assert (g[1]["false_alerts"], g[1]["false_alerts_per_file"], g[1]["segments_alerted"]) == (1, 1.0, 0)


# ------------------------------------------------------------------------------------------- long normal operation


def test_normal_metrics_pure():
    ts = np.arange(0.0, 7201.0, 1.0)  # 2 h of data after row 0
    m = normal_metrics(ts, [(100, 200), (7000, None)], [0, 50, 100, 150], [9.0, 1.0, 2.0, 3.0], 2.0, 0)
    assert m.alerts == 2 and m.hours == pytest.approx(2.0) and m.alerts_per_hour == pytest.approx(1.0)
    assert m.active_rows == 100 + 201 and m.active_share == pytest.approx(301 / 7201)
    assert m.score_p99 == pytest.approx(np.percentile([9.0, 1.0, 2.0, 3.0], 99))
    later = normal_metrics(ts, [], [0, 50, 100, 150], [9.0, 1.0, 2.0, 3.0], 2.0, 60)
    assert later.score_max == 3.0 and later.headroom == pytest.approx(np.percentile([2.0, 3.0], 99) / 2.0)
    assert later.alerts_per_hour == 0.0 and later.scored_rows == 7201 - 60


def test_long_normal_mode_counts_the_false_alerts(tmp_path, recording, capsys):
    f = tmp_path / "normal.csv"
    _write_normal(f, recording)
    out = tmp_path / "out"
    assert main(["--model", "pump-anomaly", "--normal", str(f), "--calibration-samples", str(CAL), "--out", str(out), "--no-plots"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["files"] == [] and s["total"] is None
    (n,) = s["normal"]
    # two bumps of +3 A, each raised within a window of its start and cleared after its end (before the next): two false alerts
    assert n["alerts"] == n["false_alerts"] == 2
    spans = [(a["raise_row"], a["clear_row"]) for a in n["alert_details"]]
    for (a, b), (r, c) in zip(BUMPS, spans):
        assert a <= r < a + 10 and b <= c < b + 60, spans
    assert n["active_rows"] == sum(c - r for r, c in spans)
    assert n["active_share"] == pytest.approx(n["active_rows"] / (400 - CAL))
    assert n["hours"] == pytest.approx((399 - CAL) / 3600)
    assert n["alerts_per_hour"] == pytest.approx(2 / n["hours"])
    assert n["headroom_p99"] > 1.0  # the bumps push the top 1 % of the scores over the threshold
    assert "normal operation" in capsys.readouterr().out
    # the same through the API: the p99 of the scores after teach-in over the calibrated threshold
    res = Evaluation.create({"calibration.samples": CAL, "model.path": "pump-anomaly"}).run(f, labelled=False)
    r = res.run
    assert n["headroom_p99"] == pytest.approx(np.percentile(r.scores[r.score_rows >= CAL], 99) / r.threshold)


def test_label_false_plays_an_operator_whose_label_stops_the_repeat(tmp_path, recording):
    """--label-false 1: the first bump's alert is labelled false_positive when it clears (the daemon's feedback
    path folds its readings into the normal model); the same bump again raises nothing."""
    f = tmp_path / "normal.csv"
    _write_normal(f, recording)
    out = tmp_path / "out"
    args = ["--model", "pump-anomaly", "--normal", str(f), "--calibration-samples", str(CAL), "--no-plots"]
    assert main([*args, "--out", str(out / "none")]) == 0
    (plain,) = json.loads((out / "none" / "summary.json").read_text())["normal"]
    assert plain["alerts"] == 2 and plain["after_labels"] is None  # both bumps alert without a label
    assert main([*args, "--out", str(out / "one"), "--label-false", "1"]) == 0
    (n,) = json.loads((out / "one" / "summary.json").read_text())["normal"]
    (first,) = n["alert_details"]
    assert first["labelled_false"] is True and BUMPS[0][0] <= first["raise_row"] < BUMPS[0][1]
    assert n["after_labels"]["labelled"] == 1 and n["after_labels"]["alerts"] == 0
    assert n["after_labels"]["after_row"] == first["clear_row"]
    assert "the first 1 false alert(s) labelled false_positive" in (out / "one" / "summary.txt").read_text()


def test_label_false_labels_a_false_alert_and_never_one_on_a_labelled_fault(tmp_path, recording):
    """On a labelled recording the simulated operator labels only alerts none of whose readings is labelled: here
    the first bump is labelled a fault (its alert stays unlabelled), the second is normal (its alert is labelled)."""
    f = tmp_path / "labelled.csv"
    _write_normal(f, recording, label_column=True)
    lines = f.read_text().splitlines()
    for i in range(*BUMPS[0]):  # row i of the recording is line i + 1
        lines[i + 1] = lines[i + 1][: -len(";0")] + ";1"
    f.write_text("\n".join(lines) + "\n")
    ev = Evaluation.create({"calibration.samples": CAL, "model.path": "pump-anomaly"})
    ev.label_false = 5
    res = ev.run(f)
    alerts = res.run.alerts
    assert [a.labelled_false for a in alerts] == [False, True], [(a.raise_row, a.clear_row) for a in alerts]
    assert BUMPS[0][0] <= alerts[0].raise_row < BUMPS[0][1] and BUMPS[1][0] <= alerts[1].raise_row < BUMPS[1][1]
    assert res.after_labels()["labelled"] == 1 and res.after_labels()["after_row"] == alerts[1].clear_row
    assert res.metrics.segments_alerted == 1


def test_unlabelled_file_under_data_is_skipped_or_taken_as_normal(tmp_path, recording, capsys):
    data = tmp_path / "data"
    data.mkdir()
    _write_normal(data / "free.csv", recording)
    _write_recording(data / "step.csv")
    out = tmp_path / "out"
    assert main(["--model", "pump-anomaly", "--data", str(data), "--calibration-samples", str(CAL), "--out", str(out), "--no-plots"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["normal"] == [] and s["skipped"] == [{"file": "free.csv", "reason": "no 'anomaly' column"}]
    assert main(["--model", "pump-anomaly", "--data", str(data), "--calibration-samples", str(CAL), "--out", str(out), "--no-plots",
                 "--unlabelled-as-normal"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert [n["file"] for n in s["normal"]] == ["free.csv"] and s["skipped"] == []
    assert [f["file"] for f in s["files"]] == ["step.csv"] and s["normal"][0]["alerts"] == 2
    assert main(["--out", str(out)]) == 2
    assert "give --data DIR" in capsys.readouterr().err
    assert main(["--model", "pump-anomaly", "--normal", str(tmp_path / "nope.csv")]) == 2
    assert "--normal" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- API


def test_api_gives_the_commands_numbers_and_takes_overrides(tmp_path):
    _write_recording(tmp_path / "a.csv")
    out = tmp_path / "out"
    assert main(["--model", "pump-anomaly", "--data", str(tmp_path / "a.csv"), "--calibration-samples", str(CAL), "--out", str(out),
                 "--no-plots"]) == 0
    cli = json.loads((out / "summary.json").read_text())["files"][0]
    (res,) = evaluate_files([tmp_path / "a.csv"], {"calibration.samples": CAL, "model.path": "pump-anomaly"})
    c = res.metrics.counts
    assert (c.tp, c.fp, c.fn, c.tn) == (cli["tp"], cli["fp"], cli["fn"], cli["tn"])
    assert res.spans == [(a["raise_row"], a["clear_row"]) for a in cli["alert_details"]]
    assert res.metrics.segments_alerted == 1 and res.first_row == CAL
    # a configured threshold far above any score: no alert, the whole segment missed
    (quiet,) = evaluate_files([tmp_path / "a.csv"], {"calibration.samples": CAL, "model.threshold": 1e9, "model.path": "pump-anomaly"})
    assert quiet.spans == [] and quiet.metrics.counts.fn == SEG[1] - SEG[0]
    # decision overrides reach the pipeline
    ev = Evaluation.create({"calibration.samples": CAL, "decision.k": 5, "decision.n": 5})
    r = ev.run(tmp_path / "a.csv")
    assert (r.run.k, r.run.n) == (5, 5)
    assert r.spans[0][0] >= res.spans[0][0]  # 5 of 5 raises no earlier than 3 of 5


def test_api_build_pipeline_seam_runs_another_pipeline(tmp_path):
    _write_recording(tmp_path / "a.csv")
    built = []

    def build(settings, model, counters):
        built.append(settings.state_dir)
        return build_pipeline(settings.model_copy(update={"model": settings.model.model_copy(
            update={"threshold": 1e9})}), model, counters)

    res = evaluate_files([tmp_path / "a.csv", tmp_path / "a.csv"], {"calibration.samples": CAL, "model.path": "pump-anomaly"},
                         build_pipeline=build)
    assert len(built) == 2 and built[0] != built[1]  # a fresh pipeline and state dir per file
    assert all(r.spans == [] for r in res)


def test_overrides_are_validated_and_name_the_key():
    s = apply_overrides(default_settings(), {"decision.k": 4, "model.threshold": 2.5, "calibration.samples": 0})
    assert (s.decision.k, s.model.threshold, s.calibration.samples) == (4, 2.5, 0)
    with pytest.raises(ValueError, match="unknown setting 'decision.kk'"):
        apply_overrides(default_settings(), {"decision.kk": 1})
    with pytest.raises(ValueError, match="unknown setting 'nope.k'"):
        apply_overrides(default_settings(), {"nope.k": 1})
    with pytest.raises(ValueError, match=r"decision\.k: .*greater than or equal to 1 \(got 0\)"):
        apply_overrides(default_settings(), {"decision.k": 0})


# ------------------------------------------------------------------------------------------- teach-in as a duration


def _write_slow(path: Path, days: int = 3) -> tuple[int, tuple[int, int]]:
    """One temperature every 5 min for ``days`` days; a labelled fall of 10 degrees (20 x its noise) for 6 hours
    on the last day. (rows, the labelled rows)."""
    rng = np.random.default_rng(3)
    n, seg = days * 288, ((days - 1) * 288 + 60, (days - 1) * 288 + 132)
    lines = ["timestamp,temperature,anomaly"]
    for i in range(n):
        fault = seg[0] <= i < seg[1]
        lines.append(f"{1_700_000_000 + 300 * i},{80 + rng.normal(0, 0.5) - 10 * fault:.3f},{int(fault)}")
    path.write_text("\n".join(lines) + "\n")
    return n, seg


def test_teach_in_as_a_duration_is_scored_from_where_it_ended(tmp_path, capsys):
    """--calibration-duration 1d (and EDGE_AGENT_CALIBRATION__DURATION from --env-file, as the daemon reads it):
    the teach-in is the first day of data, 289 readings 5 min apart (the first at t0, the last at t0 + 24 h), and
    the rows after it are scored; not the sidecar's 400 rows, which the daemon would not use either."""
    f = tmp_path / "slow.csv"
    n, seg = _write_slow(f)
    out = tmp_path / "out"
    assert main(["--data", str(f), "--calibration-duration", "1d", "--out", str(out), "--no-plots"]) == 0
    s = json.loads((out / "summary.json").read_text())
    (e,) = s["files"]
    assert s["calibration_duration_s"] == 86400.0 and s["calibration_samples"] == 0
    assert e["teach_in_rows"] == e["first_scored_row"] == 289 and e["scored_rows"] == n - 289
    assert e["segments_alerted"] == 1 and e["false_alerts"] == 0 and e["tn"] + e["fp"] == n - 289 - (seg[1] - seg[0])
    assert "teach-in 1d of data (289 rows) per file" in capsys.readouterr().out
    env = tmp_path / "agent.env"
    env.write_text("EDGE_AGENT_CALIBRATION__DURATION=24h\n")
    assert main(["--data", str(f), "--env-file", str(env), "--out", str(tmp_path / "env"), "--no-plots"]) == 0
    (e2,) = json.loads((tmp_path / "env" / "summary.json").read_text())["files"]
    ids = lambda entry: [a.pop("alert_id") for a in entry["alert_details"]]  # noqa: E731 (a new id per run)
    assert len(ids(e2)) == len(ids(e)) == 1 and e2 == e
    # a count as well: both must be reached, as in the daemon
    assert main(["--data", str(f), "--calibration-duration", "1h", "--calibration-samples", "300", "--out",
                 str(tmp_path / "both"), "--no-plots"]) == 0
    (e3,) = json.loads((tmp_path / "both" / "summary.json").read_text())["files"]
    assert e3["first_scored_row"] == 300
    capsys.readouterr()
    assert main(["--data", str(f), "--calibration-duration", "soon", "--out", str(tmp_path / "bad")]) == 2
    assert "--calibration-duration: 'soon': must be seconds or a number with a unit" in capsys.readouterr().err
