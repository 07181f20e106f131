"""What ``edge-agent evaluate`` prints and writes: the aligned tables, each file's JSON entry and the progress
line."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Sequence, TextIO

from agent.evaluation.runner import FileRun
from agent.evaluation.scoring import FileMetrics, metrics_dict


def _fmt(v: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


TABLE_COLUMNS = ("file", "rows", "thr", "TP", "FP", "FN", "TN", "F1", "FAR%", "MAR%", "alerted", "delay_s", "false")


def table(rows: Sequence[dict[str, Any]], total: dict[str, Any]) -> str:
    """The aligned text table: one line per file and a TOTAL line."""

    def cells(name: str, m: dict[str, Any], thr: float | None) -> list[str]:
        return [
            name, str(m["scored_rows"]), _fmt(thr, ".4g"), str(m["tp"]), str(m["fp"]), str(m["fn"]), str(m["tn"]),
            _fmt(m["f1"], ".3f"), _fmt(m["far"], ".1f", 100), _fmt(m["mar"], ".1f", 100),
            f"{m['segments_alerted']}/{m['segments']}", _fmt(m["median_delay_s"], ".1f"), str(m["false_alerts"]),
        ]

    lines = [list(TABLE_COLUMNS)] + [cells(r["file"], r, r["threshold"]) for r in rows]
    lines.append(cells("TOTAL", total, None))
    widths = [max(len(line[i]) for line in lines) for i in range(len(TABLE_COLUMNS))]

    def render(line: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()

    out = [render(lines[0]), "  ".join("-" * w for w in widths)]
    out += [render(line) for line in lines[1:-1]]
    out += ["  ".join("-" * w for w in widths), render(lines[-1])]
    return "\n".join(out) + "\n"


def file_entry(run: FileRun, metrics: FileMetrics, first_row: int, plot: str | None) -> dict[str, Any]:
    from agent.parse import iso

    ts = run.ts
    return {
        "file": run.rel,
        **metrics_dict(
            metrics.counts, rows=metrics.rows, scored_rows=metrics.scored_rows, first_scored_row=first_row,
            segments=len(metrics.segments), segments_alerted=metrics.segments_alerted,
            median_delay_s=metrics.median_delay_s, false_alerts=metrics.false_alerts, alerts=metrics.alerts,
        ),
        "threshold": run.threshold,
        "teach_in_rows": run.teach_in_rows,
        "rejected": run.rejected,
        "bad_labels": run.bad_labels,
        "suppressed_alerts": run.suppressed,
        "segment_details": [
            {"start_row": s.start, "end_row": s.end, "start": iso(float(ts[s.start])), "end": iso(float(ts[s.end - 1])),
             "alerted": s.alerted, "delay_s": s.delay_s}
            for s in metrics.segments
        ],
        "alert_details": [asdict(a) for a in run.alerts],
        "plot": plot,
    }


class Progress:
    """One in-place line on a terminal (``\\r``); one line per finished file otherwise."""

    def __init__(self, stream: TextIO, total_files: int, total_rows: int):
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.total_files, self.total_rows = total_files, total_rows
        self.rows_before = 0
        self.index = 0
        self.name = ""
        self._last = 0.0
        self._width = 0

    def start(self, index: int, name: str) -> None:
        self.index, self.name = index, name
        self.row(0, force=True)

    def row(self, rows_in_file: int, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        done = self.rows_before + rows_in_file
        frac = min(1.0, done / self.total_rows) if self.total_rows else 1.0
        bar = "#" * int(frac * 30)
        self._line(
            f"[{bar:<30}] {frac:4.0%}  file {self.index}/{self.total_files} {self.name}  rows {done}/{self.total_rows}"
        )

    def _line(self, text: str) -> None:
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)

    def done(self, rows: int, note: str) -> None:
        self.rows_before += rows
        if self.tty:
            self.row(0, force=True)
        else:
            self.stream.write(f"[{self.index}/{self.total_files}] {self.name}: {rows} rows, {note}\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (a warning) without garbling the bar."""
        if self.tty and self._width:
            self._line("")
            self.stream.write("\r")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0



def normal_table(rows: Sequence[dict[str, Any]]) -> str:
    """Aligned text table of the long-normal-operation runs."""
    head = ["normal file", "rows", "hours", "thr", "alerts", "per_hour", "active%", "p99/thr", "max/thr"]
    lines = [head] + [[
        r["file"], str(r["scored_rows"]), f"{r['hours']:.2f}", _fmt(r["threshold"], ".4g"), str(r["alerts"]),
        _fmt(r["alerts_per_hour"], ".2f"), _fmt(r["active_share"], ".2f", 100), _fmt(r["headroom_p99"], ".3f"),
        _fmt(r["max_over_threshold"], ".3f"),
    ] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]

    def render(line: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()

    return "\n".join([render(head), "  ".join("-" * w for w in widths), *map(render, lines[1:])]) + "\n"


def teach_in_text(samples: int, duration_s: float | None, first_rows: list[int]) -> str:
    """The teach-in in the report's header: ``400 rows``, or ``7d of data (2017 rows)`` with a duration."""
    if not duration_s:
        return f"{samples} rows"
    unit, sec = next(((u, s) for u, s in (("d", 86400), ("h", 3600), ("m", 60)) if duration_s % s == 0), ("s", 1))
    text = f"{duration_s / sec:g}{unit} of data" + (f" and {samples} rows" if samples else "")
    if first_rows:
        lo, hi = min(first_rows), max(first_rows)
        text += f" ({lo} rows)" if lo == hi else f" ({lo}-{hi} rows)"
    return text
