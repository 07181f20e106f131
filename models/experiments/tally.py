"""The tally the experiments print: every labelled CSV under a folder through the agent's own pipeline
(``agent.evaluate``, a fresh teach-in of ``teach_in`` readings per file), pooled, and the alerts on SKAB's long
normal recording when the folder has it. Used by the scripts beside it; the generic detector is whatever they
patched it to be."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from agent.detectors import open_model
from agent.evaluate import default_settings, find_csvs, pipeline_factory, read_header, run_file, score_file


def tally(data: Path, teach_in: int, each: Callable[[str, object], None] | None = None) -> str:
    """``all files F1 … FAR … MAR … alerted/segments false alerts N (files with more than one) | long normal
    alerts N``; ``each(relative path, metrics)`` is called per file when given."""
    logging.disable(logging.WARNING)
    model = open_model("generic")
    make = pipeline_factory(default_settings(), model, teach_in)
    tot = dict.fromkeys(("tp", "fp", "fn", "tn", "segments", "alerted", "false", "over_one"), 0)
    for path in sorted(find_csvs(data)):
        if "anomaly" not in read_header(path):
            continue
        fr = run_file(model, path, path.name, make)
        m = score_file(fr.labels, fr.ts, fr.spans, teach_in)
        for k in ("tp", "fp", "fn", "tn"):
            tot[k] += getattr(m.counts, k)
        tot["segments"] += len(m.segments)
        tot["alerted"] += m.segments_alerted
        tot["false"] += m.false_alerts
        tot["over_one"] += m.false_alerts > 1
        if each is not None:
            each(str(path.relative_to(data)), m)
    tp, fp, fn, tn = tot["tp"], tot["fp"], tot["fn"], tot["tn"]
    normal = data / "anomaly-free" / "anomaly-free.csv"
    long_normal = len(run_file(model, normal, "af", make, labelled=False).spans) if normal.is_file() else None
    return (f"all files F1 {tp / max(1e-9, tp + (fp + fn) / 2):.3f} FAR {100 * fp / max(1, fp + tn):.1f} "
            f"MAR {100 * fn / max(1, fn + tp):.1f} {tot['alerted']}/{tot['segments']} false alerts {tot['false']} "
            f"({tot['over_one']}) | long normal alerts {long_normal}")
