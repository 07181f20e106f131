"""The evidence store on real SQLite files: bounded in bytes, oldest unlabelled evidence goes first, labelled
evidence last; labels give the precision; a corrupt file is moved aside; export writes SKAB-format CSVs."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.evidence import EvidenceStore, evidence_payload, export_feedback

CHANNELS = ["Current", "Pressure"]


def _ev(n: int = 10) -> dict:
    return evidence_payload(CHANNELS, [(1_583_750_000.0 + i, (1.0 + i, 2.0)) for i in range(n)], score=3.0)


def _size(ev: dict) -> int:
    return len(json.dumps(ev, separators=(",", ":")))


def _add(store: EvidenceStore, alert_id: str) -> int:
    size = store.add(alert_id, "pump", _ev())
    time.sleep(0.002)  # distinct creation times: "oldest" is well defined
    return size


def test_cap_drops_the_oldest_unlabelled_evidence_first_and_labelled_last(tmp_path):
    one = _size(_ev())
    store = EvidenceStore(tmp_path / "evidence.db", max_bytes=3 * one)
    assert _add(store, "a") == one
    _add(store, "b")
    _add(store, "c")
    store.label("a", "true_positive")  # the oldest, but labelled: the training data the loop exists for
    _add(store, "d")  # full: the oldest unlabelled one (b) makes room
    assert [x for x in "abcd" if store.has_alert(x)] == ["a", "c", "d"]
    store.label("c", "false_positive")
    store.label("d", "true_positive")
    _add(store, "e")  # nothing unlabelled is left: the oldest labelled one goes
    assert [x for x in "abcde" if store.has_alert(x)] == ["c", "d", "e"]
    assert store.get("e") == _ev()
    # labels outlive their evidence, and give the precision
    assert store.counts() == {"true_positive": 2, "false_positive": 1, "precision": round(2 / 3, 4)}
    store.close()


def _stored_bytes(path: Path) -> int:
    """What the file holds, read by a connection of its own (the bodies' lengths, not the bookkeeping)."""
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COALESCE(SUM(length(body)), 0) FROM evidence").fetchone()[0]


def test_extending_evidence_when_its_alert_clears_stays_within_the_cap(tmp_path):
    """The readings while an alert was active join its evidence within max_bytes: the oldest other unlabelled
    evidence makes room; evidence that would be over the cap on its own is kept as raised, nothing evicted for it."""
    one = _size(_ev())
    path = tmp_path / "evidence.db"
    store = EvidenceStore(path, max_bytes=3 * one)
    for x in "abc":
        _add(store, x)
    store.label("a", "true_positive")
    active = [(1_583_760_000.0 + i, [5.0, 6.0]) for i in range(10)]
    store.extend("c", active)
    assert store.get("c")["ts"] == _ev()["ts"] + [t for t, _ in active]
    assert [x for x in "abc" if store.has_alert(x)] == ["a", "c"]  # b, the oldest unlabelled, made room
    assert _stored_bytes(path) <= store.max_bytes
    before = store.get("c")
    store.extend("c", [(1_583_770_000.0 + i, [1.0, 2.0]) for i in range(1000)])  # 23 KB: over the cap alone
    assert store.get("c") == before and store.has_alert("a")
    assert _stored_bytes(path) <= store.max_bytes
    store.close()


def test_labels_are_checked(tmp_path):
    store = EvidenceStore(tmp_path / "evidence.db")
    with pytest.raises(ValueError, match="true_positive, false_positive"):
        store.label("a", "maybe")
    assert store.counts()["precision"] is None
    store.close()


def test_a_corrupt_file_is_moved_aside_and_a_new_store_starts(tmp_path):
    path = tmp_path / "evidence.db"
    path.write_bytes(b"this is not a database" * 100)
    store = EvidenceStore(path)
    assert _add(store, "a") > 0 and store.has_alert("a")
    assert len(list(tmp_path.glob("evidence.db.corrupt-*"))) == 1
    store.close()


def test_export_writes_one_skab_csv_per_labelled_alert(tmp_path):
    store = EvidenceStore(tmp_path / "evidence.db")
    store.add("fault", "pump", {**_ev(), "asset": "pump-1"})  # raised by an asset
    _add(store, "noise")
    _add(store, "unlabelled")
    store.label("fault", "true_positive", "valve stuck")
    store.label("noise", "false_positive")
    store.label("gone", "false_positive")  # labelled, but its evidence was never kept
    out = tmp_path / "export"
    assert export_feedback(store, out) == {"written": 2, "without_evidence": 1}
    with open(out / "labels.csv", newline="") as f:
        index = list(csv.DictReader(f))
    assert [(r["alert_id"], r["label"], r["file"], r["asset"]) for r in index] == [
        ("fault", "true_positive", "fault.csv", "pump-1"), ("noise", "false_positive", "noise.csv", ""),
        ("gone", "false_positive", "", "")]
    with open(out / "fault.csv", newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    assert rows[0] == ["datetime", *CHANNELS, "anomaly"]
    assert len(rows) == 11 and {r[-1] for r in rows[1:]} == {"1"}
    assert rows[1][:3] == ["2020-03-09 10:33:20.000", "1.0", "2.0"]
    with open(out / "noise.csv", newline="") as f:
        assert {r[-1] for r in list(csv.reader(f, delimiter=";"))[1:]} == {"0"}
    store.close()


@pytest.mark.parametrize("where", ["under-a-file", "a-file", "read-only"])
def test_export_feedback_to_an_unwritable_out_is_one_line_and_exit_1(tmp_path, where):
    """``edge-agent export-feedback --out PATH`` where PATH cannot be written: one line naming it, exit 1."""
    state = tmp_path / "state"
    state.mkdir()
    store = EvidenceStore(state / "evidence.db")
    _add(store, "fault")
    store.label("fault", "true_positive")
    store.close()
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file\n")
    out = {"under-a-file": blocker / "out", "a-file": blocker, "read-only": Path("/proc/edge-agent-export")}[where]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["EDGE_AGENT_STATE_DIR"] = str(state)
    r = subprocess.run([sys.executable, "-m", "agent", "export-feedback", "--out", str(out)], env=env,
                       capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith(f"export-feedback: --out {out}: cannot write"), r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
