"""``edge-agent evaluate``: score the daemon's alerts against labelled recordings (SKAB format).

Each CSV under ``--data`` that has an ``anomaly`` column is replayed through a fresh :class:`Pipeline` (a new
temporary state directory per file, so teach-in never leaks between files) — the very code the daemon runs, not
a re-implementation. The first ``N`` rows are teach-in (``--calibration-samples``, SKAB protocol: 400); the
rows after them are scored.


The scoring rules are in agent/evaluation/scoring.py (and docs/evaluate.md); the replay in
agent/evaluation/runner.py; tables and plots in agent/evaluation/report.py and plot.py. This module is the command
and the public API: every name scripts import from ``agent.evaluate`` is re-exported here.

matplotlib is optional (``pip install matplotlib``): without it the tables are written, not the plots.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from agent.evaluation.overrides import apply_overrides, default_settings, unrunnable
from agent.evaluation.plot import MATPLOTLIB_HINT, plot_file, plot_name
from agent.evaluation.report import TABLE_COLUMNS, Progress, file_entry, normal_table, table, teach_in_text
from agent.evaluation.runner import (
    AlertRecord,
    Evaluation,
    FileResult,
    FileRun,
    evaluate_files,
    find_csvs,
    model_channels,
    pipeline_factory,
    read_header,
    run_file,
)
from agent.evaluation.scoring import (
    LABEL_COLUMN,
    Confusion,
    FileMetrics,
    NormalMetrics,
    SegmentResult,
    Span,
    active_rows,
    alert_row,
    confusion,
    false_alert_flags,
    group_totals,
    label_segments,
    median,
    normal_metrics,
    score_file,
    segment_results,
    totals,
)
from agent.families import GROUP_BY, FamiliesError, Grouping, group_table, load_families

__all__ = [
    "EXIT_OK", "EXIT_USAGE", "EXIT_WRITE", "LABEL_COLUMN", "MATPLOTLIB_HINT", "TABLE_COLUMNS", "AlertRecord",
    "Confusion", "Evaluation", "FileMetrics", "FileResult", "FileRun", "NormalMetrics", "Progress", "SegmentResult",
    "Span", "active_rows", "add_arguments", "alert_row", "apply_overrides", "confusion", "default_settings",
    "evaluate_files", "false_alert_flags", "file_entry", "find_csvs", "group_totals", "label_segments", "main",
    "median", "model_channels", "normal_metrics", "normal_table", "pipeline_factory", "plot_file", "plot_name",
    "read_header", "run", "run_file", "score_file", "segment_results", "table", "totals",
]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_WRITE = 1  # the results could not be written (--out): nothing is run, or what ran is not kept


def add_arguments(parser: argparse.ArgumentParser, env_file: bool = True) -> argparse.ArgumentParser:
    """The options of ``edge-agent evaluate`` (``env_file=False`` when the caller adds ``--env-file`` itself)."""
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="labelled CSV (SKAB format, 'anomaly' column), or a folder searched recursively for *.csv")
    parser.add_argument("--normal", action="append", default=[], metavar="FILE",
                        help="a recording of normal operation (no labels needed; repeatable): teach-in on its first N "
                             "rows, then report false alerts per hour, alert-active share and score headroom")
    parser.add_argument("--unlabelled-as-normal", action="store_true",
                        help="treat a CSV under --data without an 'anomaly' column as --normal instead of skipping it")
    parser.add_argument("--group-by", choices=GROUP_BY, default="file",
                        help="also report per fault family (--families mapping) or per folder, and pooled "
                             "(default: file, the per-file table only)")
    parser.add_argument("--families", metavar="FILE", default=None,
                        help="family mapping for --group-by family: JSON or TOML table of path glob = family name "
                             "(default: the bundled SKAB mapping)")
    parser.add_argument("--calibration-samples", type=_non_negative, default=None, metavar="N",
                        help="first N rows of each file are teach-in, the rest is scored "
                             "(default: the model sidecar's calibration.samples; SKAB protocol: 400)")
    parser.add_argument("--calibration-duration", type=_duration, default=None, metavar="D",
                        help="teach-in as a span of data time instead (90s, 15m, 24h, 7d), as the daemon's "
                             "EDGE_AGENT_CALIBRATION__DURATION: each file is scored from where its teach-in ended "
                             "(with --calibration-samples both must be reached)")
    parser.add_argument("--model", metavar="PATH", default=None,
                        help="a bundled model's name (generic, pump-anomaly, machine-failure) or a .tflite with its .json "
                             "sidecar beside it (default: the bundled generic detector)")
    parser.add_argument("--runtime", choices=["auto", "ai_edge_litert", "tflite_runtime"], default=None,
                        help="TFLite runtime (default: auto)")
    parser.add_argument("--out", metavar="DIR", default="eval-out",
                        help="where summary.txt, summary.json and the plots go (default: ./eval-out)")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    parser.add_argument("--label-false", type=_non_negative, default=0, metavar="N",
                        help="play an operator: label false alerts false_positive when they clear, through the "
                             "daemon's feedback path (their readings become normal), until N labels per file are "
                             "learnt; reports the alerts raised after the last label (default 0: no labels)")
    if env_file:
        parser.add_argument("--env-file", metavar="PATH", default=None,
                            help="take model, runtime, teach-in (samples, duration, time zone), threshold, decision (k, "
                                 "n, clear_ratio) and alert policy (cooldown, rate limit) from this agent env file and "
                                 "the environment, as the daemon would; "
                                 "options given here win (default: none of them, the sidecar's values)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the pipeline's log lines (alerts, teach-in)")
    return parser


def _duration(text: str) -> float:
    from agent.settings_sections import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return v


def _policy(settings: Any) -> dict[str, Any]:
    a = getattr(settings, "alerts", None)
    if a is None:
        return {}
    return {k: getattr(a, k) for k in ("cooldown_s", "rate_limit_per_hour") if hasattr(a, k)}


def _fail(msg: str, code: int = EXIT_USAGE) -> int:
    print(f"evaluate: {msg}", file=sys.stderr)
    return code


def _count_rows(path: Path) -> int:
    with open(path, "rb") as fh:
        return max(0, sum(1 for _ in fh) - 1)


@dataclass
class _Job:
    path: Path
    rel: str
    rows: int
    labelled: bool


def _collect(data: Path | None, normal: Sequence[str], unlabelled_as_normal: bool
             ) -> tuple[list[_Job], list[dict[str, str]], int]:
    """The files to run (labelled ones under --data, then the normal ones), the skipped ones, and how many CSVs
    --data held."""
    jobs: list[_Job] = []
    skipped: list[dict[str, str]] = []
    files = find_csvs(data) if data is not None else []
    base = (data if data.is_dir() else data.parent) if data is not None else None
    for f in files:
        rel = f.relative_to(base).as_posix() if base is not None else f.name
        try:
            header = read_header(f)
        except OSError as e:
            skipped.append({"file": rel, "reason": f"unreadable ({e.strerror})"})
            continue
        if LABEL_COLUMN not in header and not unlabelled_as_normal:
            skipped.append({"file": rel, "reason": f"no '{LABEL_COLUMN}' column"})
            continue
        jobs.append(_Job(f, rel, _count_rows(f), LABEL_COLUMN in header))
    for name in normal:
        f = Path(name)
        jobs.append(_Job(f, f.name if base is None or not f.is_relative_to(base) else f.relative_to(base).as_posix(),
                         _count_rows(f), False))
    return jobs, skipped, len(files)


def run(args: argparse.Namespace) -> int:
    """``edge-agent evaluate`` with parsed arguments; the exit code."""
    from agent.infer import ModelError

    if args.data is None and not args.normal:
        return _fail("give --data DIR (labelled recordings) and/or --normal FILE (a normal recording)")
    data = Path(args.data) if args.data is not None else None
    if data is not None and not data.exists():
        return _fail(f"--data {data}: no such file or directory")
    for name in args.normal:
        if not Path(name).is_file():
            return _fail(f"--normal {name}: no such file")
    grouping = Grouping(args.group_by)
    if args.families:
        try:
            grouping = Grouping(args.group_by, tuple(load_families(Path(args.families))))
        except FamiliesError as e:
            return _fail(str(e))
    env_file = getattr(args, "env_file", None)
    if env_file:
        from agent.settings import ConfigError, load_settings

        try:
            settings = load_settings(Path(env_file))
        except ConfigError as e:
            for line in e.problems:
                print(f"config error: {line}", file=sys.stderr)
            return EXIT_USAGE
    else:
        settings = default_settings()
    overrides: dict[str, Any] = {}
    if args.model:
        overrides["model.path"] = args.model
    if args.runtime:
        overrides["model.runtime"] = args.runtime
    if args.calibration_samples is not None:
        overrides["calibration.samples"] = args.calibration_samples
    if args.calibration_duration is not None:
        overrides["calibration.duration"] = args.calibration_duration
    try:
        ev = Evaluation.create(overrides, settings=settings)
    except ModelError as e:
        return _fail(f"model error: {e}")
    except ValueError as e:
        return _fail(str(e))
    model, samples, settings = ev.model, ev.samples, ev.settings
    given = {"EDGE_AGENT_MODEL__PATH": ("--model", args.model),
             "EDGE_AGENT_CALIBRATION__SAMPLES": ("--calibration-samples", args.calibration_samples)}
    refused = unrunnable(settings, {env: flag for env, (flag, value) in given.items() if value is not None})
    if refused:
        return _fail("; ".join(refused))

    out = Path(args.out)
    progress = Progress(sys.stderr, 0, 0)
    try:
        jobs, skipped, n_csv = _collect(data, args.normal, args.unlabelled_as_normal)
    except OSError as e:
        return _fail(f"cannot read {e.filename} ({e.strerror})")
    for s in skipped:
        progress.message(f"warning: skipping {s['file']}: {s['reason']}")
    if not jobs:
        return _fail(
            f"no labelled CSV (with an '{LABEL_COLUMN}' column) in {data}"
            + (f" ({n_csv} CSV file(s) found, none labelled)" if n_csv else " (no *.csv found)")
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return _fail(f"--out {out}: cannot create ({e.strerror})", EXIT_WRITE)

    ev.verbose = args.verbose
    ev.label_false = args.label_false
    plots = not args.no_plots
    progress = Progress(sys.stderr, len(jobs), sum(j.rows for j in jobs))
    entries: list[dict[str, Any]] = []
    results: list[FileMetrics] = []
    groups: list[str] = []
    normal_rows: list[dict[str, Any]] = []
    params: dict[str, Any] = {}
    first_rows: list[int] = []  # where each file's scoring starts (its teach-in length)
    try:
        for i, job in enumerate(jobs, 1):
            progress.start(i, job.rel)
            try:
                res = ev.run(job.path, job.rel, labelled=job.labelled, on_row=progress.row)
            except ModelError as e:  # the model cannot run as configured: no file would
                return _fail(f"{job.rel}: {e}")
            except (OSError, ValueError) as e:
                progress.message(f"warning: skipping {job.rel}: {e}")
                skipped.append({"file": job.rel, "reason": str(e)})
                continue
            fr, m = res.run, res.metrics
            first_rows.append(res.first_row)
            for note in res.notes():
                progress.message(f"warning: {job.rel}: {note}")
            png = None
            if plots and len(fr.ts):
                try:
                    plot_file(fr, model_channels(model, job.path), res.first_row, out / plot_name(job.rel))
                    png = plot_name(job.rel)
                except ImportError:
                    progress.message(MATPLOTLIB_HINT)
                    plots = False
            params = {"k": fr.k, "n": fr.n, "clear_ratio": fr.clear_ratio}
            if job.labelled:
                entries.append(file_entry(fr, m, res.first_row, png))
                results.append(m)
                groups.append(grouping.group(job.rel, job.path, lambda msg: progress.message(f"warning: {msg}")))
                note = f"{m.alerts} alert(s), segments alerted {m.segments_alerted}/{len(m.segments)}"
            else:
                nm = res.normal()
                after = res.after_labels()
                normal_rows.append({"file": job.rel, **nm.as_dict(), "teach_in_rows": fr.teach_in_rows,
                                    "rejected": fr.rejected, "suppressed_alerts": fr.suppressed,
                                    "after_labels": after, "alert_details": [asdict(a) for a in fr.alerts],
                                    "plot": png})
                note = f"{nm.alerts} alert(s) in {nm.hours:.2f} h of normal operation"
                if after is not None:
                    note += (f"; {after['labelled']} labelled false, then {after['alerts']} alert(s) in "
                             f"{after['hours']:.2f} h")
            progress.done(len(fr.ts), note)
    finally:
        progress.close()

    configured = settings.model.threshold
    sidecar = getattr(model, "sidecar", None)
    if configured is not None:
        source, shown = "configured", f"{configured:g}"
    elif (samples or ev.duration_s) and sidecar is not None and "threshold" in sidecar.calibration.fit:
        source, shown = "calibrated", "calibrated per file"
    elif sidecar is not None:
        source, shown = "sidecar", f"{sidecar.threshold:g} (sidecar)"
    else:
        source, shown = "model", "the model's own"
    describe = model.describe() if hasattr(model, "describe") else {"name": getattr(model, "name", str(model))}
    header = (
        f"model {describe.get('name')} {describe.get('version', '')} sha256 {getattr(model, 'sha256', '-')} "
        f"({getattr(model, 'runtime', '-')} {getattr(model, 'runtime_version', '')})\n"
        f"data {data if data is not None else '-'}: {len(results)} labelled file(s), {len(normal_rows)} normal, "
        f"{len(skipped)} skipped; teach-in {teach_in_text(samples, ev.duration_s, first_rows)} per file; "
        f"threshold {shown}, k={params.get('k')} n={params.get('n')} clear_ratio={params.get('clear_ratio')}\n"
    )
    body = ""
    total: dict[str, Any] = {}
    group_rows: list[dict[str, Any]] = []
    if results:
        total = totals(results)
        total["files"] = len(results)
        total["false_alerts_per_file"] = total["false_alerts"] / len(results)
        header += ("rows = scored rows; FAR/MAR in %; alerted = segments alerted; delay_s = median detection delay; "
                   "false = false alerts\n")
        body += table(entries, total)
        if grouping.by != "file":
            group_rows = group_totals(groups, results, [e["file"] for e in entries])
            body += f"\nper {grouping.by}:\n" + group_table(group_rows, total)
    if normal_rows:
        body += ("\nnormal operation (every alert is false): hours = data time after teach-in; per_hour = false "
                 "alerts per hour; active% = rows with an alert active; p99/thr, max/thr = score over threshold\n")
        body += normal_table(normal_rows)
        for r in normal_rows:
            if r["after_labels"] is not None:
                a = r["after_labels"]
                body += (f"{r['file']}: the first {a['labelled']} false alert(s) labelled false_positive; after the "
                         f"last label (row {a['after_row']}): {a['alerts']} alert(s) in {a['hours']:.2f} h\n")
    skipped_txt = "".join(f"skipped {s['file']}: {s['reason']}\n" for s in skipped)
    summary = {
        "model": {**describe, "path": str(getattr(model, "path", "")), "runtime": getattr(model, "runtime", None),
                  "runtime_version": getattr(model, "runtime_version", None)},
        "data": None if data is None else str(data),
        "calibration_samples": samples,
        "calibration_duration_s": ev.duration_s,
        "decision": {"threshold": configured, "threshold_source": source, **params},
        "alert_policy": _policy(settings),
        "protocol": "per file: first N rows teach-in (fresh state; with calibration_duration_s, the rows until "
                    "that span of data time, and N when given: first_scored_row per file), the rows from there on "
                    "scored point-wise by alert state "
                    "(raise row inclusive .. clear row exclusive); F1 = TP/(TP+(FP+FN)/2), FAR = FP/(FP+TN), "
                    "MAR = FN/(FN+TP); delay clamped at 0",
        "group_by": grouping.by,
        "families": [list(p) for p in grouping.mapping] if grouping.by == "family" else None,
        "total": total or None,
        "groups": group_rows if grouping.by != "file" else None,
        "files": entries,
        "normal": normal_rows,
        "skipped": skipped,
    }
    try:
        (out / "summary.txt").write_text(header + "\n" + body.lstrip("\n") + skipped_txt)
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    except OSError as e:
        return _fail(f"cannot write to {out} ({e.strerror})", EXIT_WRITE)
    sys.stdout.write(header + "\n" + body.lstrip("\n") + skipped_txt)
    sys.stdout.write(f"written: {out / 'summary.txt'}, {out / 'summary.json'}"
                     + (f" and {sum(1 for e in entries + normal_rows if e['plot'])} plot(s)" if plots else "") + "\n")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -c 'from agent.evaluate import main; main()' --data ...``)."""
    parser = add_arguments(argparse.ArgumentParser(
        prog="edge-agent evaluate",
        description="Replay labelled recordings (SKAB format) through the agent's pipeline and score its alerts.",
    ))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad arguments, 0 on --help
        return int(e.code or 0)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
