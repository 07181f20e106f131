#!/usr/bin/env python3
"""Advice validity: is the agent's parameter advice right under the physics that generated AI4I?

Run from the repository root with the agent installed (the runtime venv is enough; no TensorFlow, no pandas):

    .venv/bin/python models/advice_validity.py --data ../shared/data/ai4i

For every cycle of the split (default: test, the same split as models/train_machine_failure.py) the bundled int8
``machine-failure`` model is run through the agent's own code (``Scorer``, batched). Each cycle the model flags
(p > threshold) gets its advice from the agent's ``Advisor`` (agent/advice.py, the bounds and actions of the
sidecar), exactly as the daemon would publish it. The advised values are then put through AI4I's published
generating rules for HDF, PWF and OSF (models/train_machine_failure.py: ``rule_modes``):

* **fixed**: of the flagged cycles where the rules say HDF, PWF or OSF happens, the share whose advised settings
  make the rules say no failure (goal >= 80 %);
* **creates another mode**: the share of all advice that makes the rules raise a mode the cycle did not have
  (goal <= 2 %);
* tool-wear (TWF) and random (RNF) failures, which no rule steers, are reported apart (a tool change may steer TWF).

``--margin`` / ``--clearance-z`` override the sidecar's advice settings: they were chosen with ``--split val``.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_machine_failure import LABEL, SENSORS, TYPES, rule_modes, stratified_split  # noqa: E402

from agent.advice import Advisor  # noqa: E402
from agent.calibrate import sidecar_normaliser  # noqa: E402
from agent.counters import Counters  # noqa: E402
from agent.infer import Model, Scorer  # noqa: E402
from agent.records import Window  # noqa: E402

MODES = ("HDF", "PWF", "OSF")


def read_ai4i(path: Path) -> tuple[list[dict[str, str]], np.ndarray, np.ndarray]:
    with open(path, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["UDI"]))
    X = np.array([[1.0 if r["Type"] == t else 0.0 for t in TYPES] + [float(r[s]) for s in SENSORS] for r in rows])
    y = np.array([int(r[LABEL]) for r in rows])
    return rows, X, y


def modes_of(types: list[str], X: np.ndarray) -> list[set[str]]:
    m = rule_modes(types, X[:, 3], X[:, 4], X[:, 5], X[:, 6], X[:, 7])
    return [{k for k in MODES if m[k][i]} for i in range(len(X))]


def share(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder holding ai4i2020.csv")
    ap.add_argument("--model", type=Path, default=HERE / "machine-failure.tflite")
    ap.add_argument("--split", choices=["val", "test"], default="test")
    ap.add_argument("--margin", type=float, default=None, help="override the sidecar's advice margin")
    ap.add_argument("--clearance-z", type=float, default=None, help="override the sidecar's advice clearance_z")
    ap.add_argument("--json", type=Path, default=None, help="also write the result as JSON")
    args = ap.parse_args(argv)
    logging.getLogger("agent").setLevel(logging.ERROR)  # the advisor's one line per advice: the table says it

    rows, X, y = read_ai4i(args.data / "ai4i2020.csv")
    tr, va, te = stratified_split(y, 0)
    idx = te if args.split == "test" else va
    model = Model(args.model)
    sc = model.sidecar
    assert sc.advice is not None, "the model has no advice section"
    updates = {k: v for k, v in (("margin", args.margin), ("clearance_z", args.clearance_z)) if v is not None}
    if updates:  # tuning on val: the same model with other advice settings
        sc.advice = sc.advice.model_copy(update=updates)
    scorer = Scorer(model, sidecar_normaliser(model))
    advisor = Advisor("validity", Counters(), rate_limit_per_hour=0)
    types = [rows[i]["Type"] for i in idx]
    Xs = X[idx]
    p = scorer.scores(Xs[:, None, :])
    flagged = np.flatnonzero(p > sc.threshold)
    before = modes_of(types, Xs)
    cols = {c: k for k, c in enumerate(sc.channels)}

    records = []
    for j in flagged:
        i = int(idx[j])
        win = Window(sensor="ai4i", start_ts=float(i), end_ts=float(i), data=Xs[j:j + 1].copy())
        msg = advisor.advise(scorer, win, {"alert_id": f"udi-{rows[i]['UDI']}", "score": float(p[j])}, sc.threshold)
        pl = msg.payload
        advised = Xs[j].copy()
        for ch, v in pl["advised"].items():
            advised[cols[ch]] = v
        after = modes_of([types[j]], advised[None])[0]
        records.append({
            "udi": int(rows[i]["UDI"]), "type": types[j], "label": int(y[i]),
            "twf": int(rows[i]["TWF"]), "rnf": int(rows[i]["RNF"]),
            "modes_before": sorted(before[j]), "modes_after": sorted(after),
            "state": pl["state"], "advised": pl["advised"], "actions": pl["actions"],
            "p": round(float(p[j]), 4), "p_after": pl["advised_probability"],
            "candidates": pl["candidates"], "search_ms": pl["search_ms"],
            "in_bounds": all(b["min"] - 1e-9 <= pl["advised"].get(c, b["min"]) <= b["max"] + 1e-9
                             for c, b in pl["bounds"].items()),
        })

    steer = [r for r in records if r["modes_before"]]
    fixed = [r for r in steer if r["state"] == "advised" and not r["modes_after"]]
    advised = [r for r in records if r["state"] == "advised"]
    creates = [r for r in advised if set(r["modes_after"]) - set(r["modes_before"])]
    twf = [r for r in records if not r["modes_before"] and r["twf"]]
    rnf = [r for r in records if not r["modes_before"] and r["rnf"] and not r["twf"]]
    other = [r for r in records if not r["modes_before"] and not r["twf"] and not r["rnf"]]
    rule_failures = sum(1 for m in before if m)
    result = {
        "split": args.split, "cycles": int(len(idx)), "model": {"name": sc.name, "version": sc.version},
        "advice_settings": sc.advice.model_dump(include={"margin", "clearance_z", "max_channels"}),
        "rule_failures_in_split": rule_failures, "flagged": len(records),
        "steerable": {"flagged_with_rule_mode": len(steer), "advised": sum(r["state"] == "advised" for r in steer),
                      "fixed": len(fixed), "fixed_share": share(len(fixed), len(steer)),
                      "by_mode": {m: {"n": sum(m in r["modes_before"] for r in steer),
                                      "fixed": sum(m in r["modes_before"] for r in fixed)} for m in MODES}},
        "creates_another_mode": {"n": len(creates), "of_advice": len(advised), "share": share(len(creates), len(advised)),
                                 "cycles": [r["udi"] for r in creates]},
        "tool_wear_failures": {"flagged": len(twf), "advised": sum(r["state"] == "advised" for r in twf),
                               "tool_change": sum("tool change" in r["actions"] for r in twf)},
        "random_failures": {"flagged": len(rnf), "advised": sum(r["state"] == "advised" for r in rnf)},
        "flagged_without_rule_mode_or_label": {"n": len(other), "advised": sum(r["state"] == "advised" for r in other)},
        "all_advice_within_bounds": all(r["in_bounds"] for r in records),
        "search_ms": {"median": float(np.median([r["search_ms"] for r in records])) if records else None,
                      "max": float(max((r["search_ms"] for r in records), default=0.0))},
        "candidates_median": float(np.median([r["candidates"] for r in records])) if records else None,
        "cycles_detail": records,
    }
    st, cr = result["steerable"], result["creates_another_mode"]
    print(f"{args.split} split: {len(idx)} cycles, {rule_failures} with an HDF/PWF/OSF rule failure; "
          f"model {sc.name} {sc.version} flags {len(records)}")
    print(f"  flagged with an HDF/PWF/OSF rule failure: {st['flagged_with_rule_mode']}; advised {st['advised']}; "
          f"the rules say no failure after the advice: {st['fixed']} ({100 * (st['fixed_share'] or 0):.1f} %, goal >= 80 %)")
    for m, v in st["by_mode"].items():
        print(f"    {m}: {v['fixed']} of {v['n']} fixed")
    print(f"  advice that creates another failure mode under the rules: {cr['n']} of {cr['of_advice']} "
          f"({100 * (cr['share'] or 0):.1f} %, goal <= 2 %) {cr['cycles']}")
    t = result["tool_wear_failures"]
    print(f"  tool-wear failures flagged: {t['flagged']} (advised {t['advised']}, with a tool change {t['tool_change']}); "
          f"random failures flagged: {result['random_failures']['flagged']}; flagged without rule mode or label: {len(other)}")
    print(f"  every advised value within its bounds: {result['all_advice_within_bounds']}; search median "
          f"{result['search_ms']['median']} ms, max {result['search_ms']['max']} ms, median {result['candidates_median']} candidates")
    for r in records:
        print(f"    UDI {r['udi']:5d} {r['type']} label={r['label']} {','.join(r['modes_before']) or '-':8s} -> "
              f"{','.join(r['modes_after']) or 'ok':8s} {r['state']:9s} {r['advised']} {r['actions']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
