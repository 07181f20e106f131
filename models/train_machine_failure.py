#!/usr/bin/env python3
"""Train the bundled ``machine-failure`` classifier on AI4I 2020 and export it as full-integer int8 TFLite.

Run from the repository root (training venv: TensorFlow, scikit-learn, pandas):

    .venv-train/bin/python models/train_machine_failure.py --data ../shared/data/ai4i --out models

Writes ``machine-failure.tflite`` and its sidecar ``machine-failure.json`` (models/README.md, schema 1) to ``--out``
and prints float-vs-int8 metrics on the validation and test splits next to the AI4I rules and trivial baselines.

Method (the model card in models/README.md has the reasons and the numbers):

* Inputs: ``Type`` one-hot and the five machine readings, plus three **derived features computed on the device**
  from the sidecar's ``derived`` list (agent/derive.py, the very code the agent runs): temperature difference
  (process - air) [K], mechanical power torque x omega [W], strain tool wear x torque [min Nm]. Never the
  failure-mode columns TWF/HDF/PWF/OSF/RNF as inputs.
* Learning: one CART decision tree per steerable failure mode (HDF, PWF, OSF: the mode columns are the
  *training targets* of the three trees, never inputs), each fitted on the training split. The depth is chosen on
  the validation split (F1 of "any tree says failure" against ``Machine failure``; ties: fewer leaves).
* The trees are compiled exactly into a 3-layer network (split units -> leaf units -> sigmoid), with each split a
  ramp of ``RAMP_Z`` normalised units instead of a hard step, then converted to full-integer int8 TFLite. The
  decision threshold is the network's natural 0.5 (not tuned). The test split is only used for the printed numbers.
* Split: random stratified 70/15/15 by ``Machine failure`` with a seeded numpy generator (unchanged from 1.0.0).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TfliteRunner, set_seed, sha256_hex, zscore_fit  # noqa: E402

from agent.derive import DerivedSpec, Deriver  # noqa: E402  (the agent's own code: identical on the device)

NAME = "machine-failure"
VERSION = "2.0.0"
CSV_NAME = "ai4i2020.csv"
LABEL = "Machine failure"
LEAKY = ["TWF", "HDF", "PWF", "OSF", "RNF"]  # failure modes: never inputs
MODES = ["HDF", "PWF", "OSF"]  # the steerable modes: training targets of one tree each
AIR, PROC, RPM, TORQUE, WEAR = ("Air temperature [K]", "Process temperature [K]", "Rotational speed [rpm]",
                                "Torque [Nm]", "Tool wear [min]")
SENSORS = [AIR, PROC, RPM, TORQUE, WEAR]
TYPES = ["L", "M", "H"]
RAD_PER_RPM = 2.0 * math.pi / 60.0
DERIVED = [
    {"name": "dT [K]", "op": "difference", "a": PROC, "b": AIR},
    {"name": "power [W]", "op": "product", "a": TORQUE, "b": RPM, "scale": RAD_PER_RPM},
    {"name": "strain [min Nm]", "op": "product", "a": WEAR, "b": TORQUE},
]
DEPTHS = [2, 3, 4, 5, 6, None]  # None: grown until pure
RAMP_Z = 0.04   # a split goes from "no" to "yes" over this many normalised units (classification: at its middle)
CLIP_Z = 4.0    # inputs clipped to +-4 (float and int8 alike): no learned split lies beyond it
SHARPNESS = 12.0  # logit = SHARPNESS x (sum of leaf activations - 0.5): p from 0.0025 to 0.9975
# Parameter advice (agent/advice.py): what an engineer may change on this machine, and how far.
ADVICE = {
    "adjustable": [
        {"channel": RPM, "min": 1200.0, "max": 2800.0, "step": 10.0},
        {"channel": TORQUE, "min": 10.0, "max": 70.0, "step": 0.5},
    ],
    "actions": [{"name": "tool change", "set": {WEAR: 0.0}}],
    "margin": 0.45,       # advised p <= 0.05
    "clearance_z": 0.0,   # chosen on val (models/advice_validity.py --split val): 0, 0.1, 0.2 all fix 42/42
    "max_channels": 2,
}
VALID_RANGES = {  # generous physical ranges for readings (rejects sensor garbage, not unusual machines)
    AIR: [250.0, 350.0], PROC: [250.0, 400.0], RPM: [0.0, 10000.0], TORQUE: [0.0, 300.0], WEAR: [0.0, 2000.0],
}


# --------------------------------------------------------------------------- data
def load(data_dir: Path):
    """(DataFrame in UDI order, channel names, raw channel values, label)."""
    import pandas as pd

    df = pd.read_csv(data_dir / CSV_NAME).sort_values("UDI").reset_index(drop=True)
    channels = [f"Type_{t}" for t in TYPES] + SENSORS
    T = np.stack([(df["Type"] == t).to_numpy(np.float64) for t in TYPES], axis=1)
    X = np.concatenate([T, df[SENSORS].to_numpy(np.float64)], axis=1)
    assert not set(channels) & set(LEAKY)
    return df, channels, X, df[LABEL].to_numpy(np.int64)


def stratified_split(y, seed, fractions=(0.70, 0.15, 0.15)):
    """Random stratified split -> (train_idx, val_idx, test_idx), each sorted (production order)."""
    rng = np.random.default_rng(seed)
    parts = [[], [], []]
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n_tr = int(round(fractions[0] * len(idx)))
        n_va = int(round(fractions[1] * len(idx)))
        parts[0].append(idx[:n_tr])
        parts[1].append(idx[n_tr:n_tr + n_va])
        parts[2].append(idx[n_tr + n_va:])
    return tuple(np.sort(np.concatenate(p)) for p in parts)


def rule_modes(type_letters, air, proc, rpm, torque, wear):
    """AI4I's published generating rules for HDF, PWF and OSF -> dict of boolean arrays (no learning)."""
    air, proc, rpm, torque, wear = (np.asarray(v, dtype=np.float64) for v in (air, proc, rpm, torque, wear))
    power = torque * rpm * RAD_PER_RPM
    limit = np.array([{"L": 11000.0, "M": 12000.0, "H": 13000.0}[t] for t in type_letters])
    return {"HDF": ((proc - air) < 8.6) & (rpm < 1380), "PWF": (power < 3500) | (power > 9000),
            "OSF": wear * torque > limit}


def rule_reference(df):
    m = rule_modes(df["Type"], df[AIR], df[PROC], df[RPM], df[TORQUE], df[WEAR])
    return (m["HDF"] | m["PWF"] | m["OSF"]).astype(np.int64)


# --------------------------------------------------------------------------- metrics
def metrics(y, pred):
    y = np.asarray(y).astype(bool)
    pred = np.asarray(pred).astype(bool)
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    tn = int((~pred & ~y).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"accuracy": round((tp + tn) / len(y), 4), "precision": round(prec, 4), "recall": round(rec, 4),
            "f1": round(f1, 4), "tp": tp, "fp": fp, "fn": fn, "tn": tn}


# --------------------------------------------------------------------------- trees
def fit_trees(XF, modes, depth, seed):
    from sklearn.tree import DecisionTreeClassifier

    return [DecisionTreeClassifier(max_depth=depth, random_state=seed).fit(XF, modes[:, k]) for k in range(len(MODES))]


def trees_predict(trees, XF):
    return np.any([t.predict(XF).astype(bool) for t in trees], axis=0)


def tree_paths(tree):
    """(splits [(feature, threshold)], failure leaves [[(split index, goes_right), ...], ...]) of a fitted tree."""
    t = tree.tree_
    splits, leaves = [], []

    def walk(node, path):
        if t.children_left[node] == -1:
            if int(np.argmax(t.value[node][0])) == 1:
                leaves.append(path)
            return
        k = len(splits)
        splits.append((int(t.feature[node]), float(t.threshold[node])))
        walk(t.children_left[node], path + [(k, False)])
        walk(t.children_right[node], path + [(k, True)])

    walk(0, [])
    return splits, leaves


def compile_network(trees, mean, std):
    """The trees as a Keras network on z-scored inputs: clip -> split ramps (relu6) -> leaf ANDs (relu6) -> sigmoid.

    Split j on feature f at raw threshold t: s_j = clip((z_f - t_z) / RAMP_Z + 0.5, 0, 1) ("x > t"), computed as
    relu6(6 * ...). A failure leaf is the soft AND of its path: clip(sum of s_j or (1 - s_j) - (depth - 1), 0, 1).
    The output is sigmoid(SHARPNESS * (sum of failure leaves - 0.5)): any tree's failure leaf makes p > 0.5.
    """
    import tensorflow as tf
    from tensorflow import keras

    splits, leaves = [], []
    for tree in trees:
        s, lv = tree_paths(tree)
        base = len(splits)
        splits += s
        leaves += [[(base + k, right) for k, right in path] for path in lv]
    n_in = len(mean)
    W1 = np.zeros((n_in, len(splits)), np.float32)
    b1 = np.zeros(len(splits), np.float32)
    for j, (f, t) in enumerate(splits):
        tz = (t - mean[f]) / std[f]
        W1[f, j] = 6.0 / RAMP_Z
        b1[j] = 6.0 * (0.5 - tz / RAMP_Z)
    W2 = np.zeros((len(splits), len(leaves)), np.float32)
    b2 = np.zeros(len(leaves), np.float32)
    for k, path in enumerate(leaves):
        n_left = sum(1 for _, right in path if not right)
        for j, right in path:
            W2[j, k] = 1.0 if right else -1.0
        b2[k] = 6.0 * (n_left - len(path) + 1)
    inp = keras.Input(shape=(n_in,), name="z")
    h = keras.layers.Lambda(lambda x: tf.clip_by_value(x, -CLIP_Z, CLIP_Z), name="clip")(inp)
    d1 = keras.layers.Dense(len(splits), activation="relu6", name="splits")
    d2 = keras.layers.Dense(len(leaves), activation="relu6", name="failure_leaves")
    d3 = keras.layers.Dense(1, activation="sigmoid", name="p")
    out = d3(d2(d1(h)))
    model = keras.Model(inp, out, name=NAME.replace("-", "_"))
    d1.set_weights([W1, b1])
    d2.set_weights([W2, b2])
    d3.set_weights([np.full((len(leaves), 1), SHARPNESS / 6.0, np.float32), np.array([-SHARPNESS / 2], np.float32)])
    return model, splits, leaves


def convert_int8(model, representative):
    """Full-integer int8 TFLite (int8 input and output, builtin int8 ops only), batch 1."""
    import tensorflow as tf

    rep = np.asarray(representative, dtype=np.float32)

    @tf.function(input_signature=[tf.TensorSpec([1] + list(rep.shape[1:]), tf.float32)])
    def serve(x):
        return model(x, training=False)

    def gen():
        for i in range(rep.shape[0]):
            yield [rep[i:i + 1]]

    # no trackable object here: with it, TF 2.21 + Keras 3 keep READ_VARIABLE ops and calibration fails
    conv = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()])
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = gen
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help=f"folder holding {CSV_NAME} (the ai4i folder)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder (models/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-split", type=Path, default=None, help="optional CSV of UDI,split for re-checks")
    ap.add_argument("--name", default=NAME, help="output stem (use another for experiments)")
    args = ap.parse_args(argv)
    t0 = time.time()
    set_seed(args.seed)
    import sklearn
    import tensorflow as tf
    from tensorflow import keras

    df, channels, X, y = load(args.data)
    tr, va, te = stratified_split(y, args.seed)
    if args.save_split:
        import pandas as pd
        split = np.empty(len(y), dtype=object)
        split[tr], split[va], split[te] = "train", "val", "test"
        pd.DataFrame({"UDI": df["UDI"], "split": split}).to_csv(args.save_split, index=False)
    print(f"{len(y)} cycles, {y.sum()} failures ({100 * y.mean():.2f} %); split train/val/test = "
          f"{len(tr)}/{len(va)}/{len(te)} with {y[tr].sum()}/{y[va].sum()}/{y[te].sum()} failures")

    derived = [DerivedSpec(**d) for d in DERIVED]
    XF = Deriver(channels, derived)(X)  # channels + derived features, exactly as the agent computes them
    columns = channels + [d.name for d in derived]
    modes = df[MODES].to_numpy(np.int64)  # training targets only

    # ---- selection on the validation split
    print(f"{'depth':>6s} {'leaves':>6s} {'val F1':>7s}  tp fp fn")
    tried = []
    for depth in DEPTHS:
        trees = fit_trees(XF[tr], modes[tr], depth, args.seed)
        m = metrics(y[va], trees_predict(trees, XF[va]))
        leaves = sum(t.get_n_leaves() for t in trees)
        tried.append((m["f1"], -leaves, depth, trees, m))
        print(f"{str(depth):>6s} {leaves:6d} {m['f1']:7.4f} {m['tp']:3d} {m['fp']:2d} {m['fn']:2d}")
    best = max(tried, key=lambda r: (r[0], r[1]))
    _, _, depth, trees, m_val_trees = best
    print(f"chosen on val: depth {depth}")

    mean, std = zscore_fit(XF[tr])
    Z = (XF - mean) / std
    model, splits, leaves = compile_network(trees, mean, std)
    p_float = model.predict(Z.astype(np.float32), batch_size=2048, verbose=0).reshape(-1).astype(np.float64)
    thr = 0.5
    # representative set: the training rows clipped like the network does, plus the two corners so that the int8
    # input range is exactly the clip range (finer steps than the raw extremes would give)
    rep = np.clip(np.concatenate([Z[tr], np.full((1, Z.shape[1]), -CLIP_Z), np.full((1, Z.shape[1]), CLIP_Z)]),
                  -CLIP_Z, CLIP_Z)
    tfl = convert_int8(model, rep)
    runner = TfliteRunner(tfl, prefer="tf")
    in_det, out_det = runner.inp, runner.out
    assert in_det["dtype"] == np.int8 and out_det["dtype"] == np.int8, (in_det["dtype"], out_det["dtype"])
    p_int8 = runner.run(Z)[:, 0]  # the agent's path: z-score -> quantise -> invoke -> dequantise output[0]

    m_float = {**metrics(y[te], p_float[te] > thr), "threshold": thr}
    m_int8 = {**metrics(y[te], p_int8[te] > thr), "threshold": thr}
    m_val = {"float": metrics(y[va], p_float[va] > thr), "int8": metrics(y[va], p_int8[va] > thr)}
    agree = float(np.mean((p_int8[te] > thr) == (p_float[te] > thr)))
    rules = rule_reference(df)
    m_rules_test, m_rules_val, m_rules_all = metrics(y[te], rules[te]), metrics(y[va], rules[va]), metrics(y, rules)
    m_always_no = metrics(y[te], np.zeros(len(te)))

    s_in, zp_in = float(in_det["quantization"][0]), int(in_det["quantization"][1])
    z_lo, z_hi = (-128 - zp_in) * s_in, (127 - zp_in) * s_in
    saturation = {c: [round(float(mean[i] + z_lo * std[i]), 3), round(float(mean[i] + z_hi * std[i]), 3)]
                  for i, c in enumerate(columns) if not c.startswith("Type_")}
    learned = []
    for mode, tree in zip(MODES, trees):
        s, lv = tree_paths(tree)
        for path in lv:
            learned.append(f"{mode}: " + " and ".join(
                f"{columns[s[j][0]]} {'>' if right else '<='} {s[j][1]:.6g}" for j, right in path))

    # ---- write artefacts
    args.out.mkdir(parents=True, exist_ok=True)
    tfl_path = args.out / f"{args.name}.tflite"
    tfl_path.write_bytes(tfl)
    sidecar = {
        "schema": 1,
        "name": NAME,
        "version": VERSION,
        "kind": "classifier",
        "sha256": sha256_hex(tfl),
        "input": {"shape": [int(v) for v in in_det["shape"]], "dtype": np.dtype(in_det["dtype"]).name},
        "output": {"shape": [int(v) for v in out_det["shape"]], "dtype": np.dtype(out_det["dtype"]).name,
                   "meaning": "probability of a heat-dissipation, power or overstrain failure in this cycle"},
        "channels": channels,
        "derived": DERIVED,
        "window": {"length": 1, "hop": 1},
        "features": "last",
        "normalisation": {"method": "zscore", "mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "score": "output",
        "threshold": thr,
        "decision": {"k": 1, "n": 1, "clear_ratio": 1.0},
        "calibration": {"samples": 0, "fit": []},
        "valid_ranges": {**{c: [0.0, 1.0] for c in channels if c.startswith("Type_")}, **VALID_RANGES},
        "advice": ADVICE,
        "provenance": {
            "data": "AI4I 2020 Predictive Maintenance Dataset, Matzka (2020), UCI ML Repository, "
                    "doi:10.24432/C5HS5C, CC BY 4.0; file ai4i2020.csv (10,000 cycles)",
            "label": LABEL,
            "inputs_note": f"failure-mode columns {'/'.join(LEAKY)} are never inputs; {'/'.join(MODES)} are the "
                           "training targets of one tree each; Type one-hot (Type_L/Type_M/Type_H = 1.0 for the "
                           "cycle's type, else 0.0)",
            "split": f"random stratified by '{LABEL}', 70/15/15 train/val/test, numpy default_rng(seed) "
                     f"permutation per class; {len(tr)}/{len(va)}/{len(te)} rows, "
                     f"{int(y[tr].sum())}/{int(y[va].sum())}/{int(y[te].sum())} failures",
            "method": f"one CART tree per mode {MODES} (scikit-learn {sklearn.__version__}, gini, depth {depth} "
                      f"chosen on val from {DEPTHS}), compiled into clip +-{CLIP_Z} -> Dense {len(splits)} relu6 "
                      f"(split ramps of {RAMP_Z} z) -> Dense {len(leaves)} relu6 (failure leaves) -> Dense 1 "
                      f"sigmoid (sharpness {SHARPNESS}); threshold 0.5, not tuned",
            "learned_splits": learned,
            "int8": f"full-integer (int8 input and output), representative dataset = {len(tr)} training rows "
                    f"clipped to +-{CLIP_Z} z; input scale {s_in:.6g}, zero point {zp_in}; raw values saturate "
                    f"outside {saturation}",
            "script": "models/train_machine_failure.py",
            "command": "python models/train_machine_failure.py " + " ".join(
                a for a in (argv if argv is not None else sys.argv[1:])),
            "seed": args.seed,
            "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                         "keras": keras.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__},
            "trained_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        },
        "metrics": {
            "split": "test",
            "n_test": int(len(te)),
            "failures_test": int(y[te].sum()),
            "float": m_float,
            "int8": m_int8,
            "int8_float_decision_agreement": round(agree, 4),
            "val": {**m_val, "trees": m_val_trees, "rules": m_rules_val},
            "rule_reference": {**m_rules_test, "note": "AI4I published HDF/PWF/OSF rules on the same test split; "
                                                      f"on all 10,000 rows F1 {m_rules_all['f1']}"},
            "always_no_failure": m_always_no,
        },
    }
    json_path = args.out / f"{args.name}.json"
    json_path.write_text(json.dumps(sidecar, indent=2) + "\n")

    print()
    for line in learned:
        print("  " + line)
    print(f"\nval split: {len(va)} cycles, {int(y[va].sum())} failures; test split: {len(te)} cycles, "
          f"{int(y[te].sum())} failures (threshold {thr})")
    print(f"{'':28s} {'acc':>7s} {'prec':>7s} {'recall':>7s} {'F1':>7s}   tp  fp  fn")
    for label, m in [("val: float", m_val["float"]), ("val: int8", m_val["int8"]), ("val: AI4I rules", m_rules_val),
                     ("test: float (Keras)", m_float), ("test: int8 (agent path)", m_int8),
                     ("test: AI4I rules", m_rules_test), ("test: always 'no failure'", m_always_no)]:
        print(f"{label:28s} {m['accuracy']:7.4f} {m['precision']:7.4f} {m['recall']:7.4f} {m['f1']:7.4f}"
              f"  {m['tp']:3d} {m['fp']:3d} {m['fn']:3d}")
    print(f"int8/float decision agreement on test: {agree:.4f}")
    print(f"wrote {tfl_path} ({len(tfl)} bytes, sha256 {sidecar['sha256'][:12]}...) and {json_path} "
          f"in {time.time() - t0:.0f} s")
    return sidecar


if __name__ == "__main__":
    main()
