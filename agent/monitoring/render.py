"""The monitor's table: device rows (agent.monitoring.rows, the JSON form) as aligned text fitted to a terminal width,
and the two header lines of the live view."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from agent.monitoring.fleet import STATE_RANK


def format_age(seconds: float | None) -> str:
    """``3s ago``, ``4m ago``, ``2h ago``, ``5d ago``; ``-`` when never seen."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m ago"
    if s < 86400:
        return f"{s // 3600}h ago"
    return f"{s // 86400}d ago"


# ================================================================================================ rendering

COLUMNS = ("DEVICE", "STATE", "LAST SEEN", "MODEL", "ALERTS", "OUTBOX", "BW RATIO", "LAST ADVICE", "NOTE")
# columns given up first when the terminal is narrow, and the width they keep at least
SHRINK = (("NOTE", 0), ("LAST ADVICE", 0), ("MODEL", 8), ("DEVICE", 8), ("LAST SEEN", 6))
COLOURS = {"offline": "31", "degraded": "33", "calibrating": "36", "online": "32", "unknown": "2"}


def _note(r: dict[str, Any]) -> str:
    parts = []
    if r["state"] == "offline" and r.get("reason"):
        parts.append(str(r["reason"]))
    if r.get("reasons"):
        parts.append("; ".join(str(x) for x in r["reasons"]))
    if r["state"] == "calibrating":
        parts.append("teach-in running")  # the status's progress is as old as the status: not shown
    src = r.get("source")
    if isinstance(src, dict) and src.get("state") not in (None, "connected") and r["state"] != "offline":
        parts.append(f"source {src['state']}")
    if r.get("stale"):
        parts.append(f"no stats for {format_age(r['age_s']).replace(' ago', '')}" if not r["have"]["stats"]
                     else "stats overdue")
    return "; ".join(parts)


def advice_text(a: dict[str, Any] | None) -> str:
    """The last advice in a few words: ``Torque [Nm] 62->57.5; tool change``; ``none within bounds``; ``-``."""
    if not a:
        return "-"
    if a.get("state") != "advised":
        return "none within bounds"
    parts = [f"{c.get('channel')} {c.get('from'):g}->{c.get('to'):g}" for c in a.get("changes") or []
             if isinstance(c.get("from"), (int, float)) and isinstance(c.get("to"), (int, float))]
    return "; ".join(parts + list(a.get("actions") or [])) or "-"


def cells(r: dict[str, Any]) -> list[str]:
    """The table cells of one device row."""
    model = r.get("model") or {}
    model_text = " ".join(str(x) for x in (model.get("name"), model.get("version")) if x) or "-"
    depth = r.get("outbox_depth")
    outbox = "-" if depth is None else str(depth)
    if r.get("outbox_dropped"):
        outbox += f" ({r['outbox_dropped']} dropped)"
    ratio = r.get("bandwidth_ratio")
    ratio_text = f"{ratio:.3g}" if isinstance(ratio, (int, float)) and math.isfinite(ratio) else "-"
    if model_text == "-" and r.get("assets"):
        model_text = f"{len(r['assets'])} assets"  # each asset's model is on its own row
    last = format_age(r.get("age_s"))
    if r.get("stale"):
        last += " (stale)"
    return [r["device_id"], r["state"], last, model_text, str(r.get("open_alerts", 0)), outbox, ratio_text,
            advice_text(r.get("last_advice")), _note(r)]


ASSET_INDENT = "  "


def _teach_in_text(cal: dict[str, Any] | None) -> str:
    """``teach-in running (400 readings)``: its length, not its progress (that is as old as the status)."""
    if not cal:
        return "teach-in running"
    length = [f"{cal['samples']} readings"] if cal.get("samples") else []
    if cal.get("duration_s"):
        length.append(f"{cal['duration_s']:g} s")
    return "teach-in running" + (f" ({' and '.join(length)})" if length else "")


def _asset_note(a: dict[str, Any]) -> str:
    parts = []
    state = a["state"]
    if state == "degraded":
        parts.append("; ".join(str(x) for x in a.get("reasons") or []) or "degraded")
    elif state == "calibrating":
        parts.append(_teach_in_text(a.get("calibration")))
    elif state == "online":
        parts.append("scoring")
    last = a.get("last_alert")
    if last:
        why = f" ({last['reason']})" if last.get("reason") else ""  # cleared at a restart: why (agent.open_alerts)
        parts.append(f"last alert {last['state']}{why} {format_age(last.get('age_s'))}")
    raised = (a.get("alerts") or {}).get("raised")
    if raised:
        parts.append(f"{raised} raised since the agent started")
    return "; ".join(parts)


def asset_cells(a: dict[str, Any]) -> list[str]:
    """The table cells of one asset row (under its gateway, indented; per-gateway columns left empty)."""
    model = a.get("model") or {}
    model_text = " ".join(str(x) for x in (model.get("name"), model.get("version")) if x) or "-"
    return [ASSET_INDENT + a["asset_id"], a["state"], "", model_text, str(a.get("open_alerts", 0)), "", "",
            advice_text(a.get("last_advice")), _asset_note(a)]


def table_cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Each gateway's cells, followed by its assets' cells."""
    out = []
    for r in rows:
        out.append(cells(r))
        out.extend(asset_cells(a) for a in r.get("assets") or [])
    return out


def fit(text: str, width: int, ellipsis: str) -> str:
    if len(text) <= width:
        return text
    if width <= len(ellipsis):
        return text[:width]
    return text[: width - len(ellipsis)] + ellipsis


def render_table(rows: list[dict[str, Any]], width: int = 120, colour: bool = False, ellipsis: str = "…") -> list[str]:
    """The fleet as aligned text lines, a gateway's assets indented under it, no line longer than ``width``:
    columns shrink (NOTE, MODEL, DEVICE, LAST SEEN in that order, truncated with ``ellipsis``) before a line is
    cut. ``colour`` adds ANSI colours to the state (after the padding, so the alignment holds)."""
    table = [list(COLUMNS)] + table_cells(rows)
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    if not any(row[-1] for row in table[1:]):
        widths[-1] = 0  # no notes: no NOTE column
    sep = 2

    def total() -> int:
        shown = [w for w in widths if w > 0]
        return sum(shown) + sep * (len(shown) - 1)

    for name, least in SHRINK:
        over = total() - width
        if over <= 0:
            break
        i = COLUMNS.index(name)
        keep = max(least, widths[i] - over)
        if least == 0 and keep < len(COLUMNS[i]) + 4:
            keep = 0  # a note column too narrow to say anything: drop it
        widths[i] = keep
    lines = []
    for n, row in enumerate(table):
        parts = []
        for i, text in enumerate(row):
            w = widths[i]
            if w <= 0:
                continue
            cell = fit(text, w, ellipsis)
            pad = cell if i == len(row) - 1 else cell.ljust(w)
            if colour and n > 0 and COLUMNS[i] == "STATE":
                code = COLOURS.get(row[i])
                pad = f"\x1b[{code}m{cell}\x1b[0m" + " " * (w - len(cell)) if code else pad
            elif colour and n == 0:
                pad = f"\x1b[1m{cell}\x1b[0m" + (" " * (w - len(cell)) if i != len(row) - 1 else "")
            parts.append(pad)
        line = (" " * sep).join(parts)
        lines.append((line if colour else line[:width]).rstrip())
    return lines


def render_header(rows: list[dict[str, Any]], now: float, where: str, connected: bool) -> list[str]:
    """Two lines above the table: broker, time and link; then the count of devices by state, of assets and of
    open alerts."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    stale = sum(1 for r in rows if r.get("stale"))
    summary = ", ".join(f"{counts[s]} {s}" for s in sorted(counts, key=lambda s: STATE_RANK.get(s, 3)))
    if stale:
        summary += f", {stale} stale"
    alerts = sum(r.get("open_alerts", 0) for r in rows)
    assets = sum(len(r.get("assets") or []) for r in rows)
    clock = datetime.fromtimestamp(now).strftime("%H:%M:%S")
    link = "connected" if connected else "DISCONNECTED (reconnecting)"
    devices = f"{len(rows)} device{'s' if len(rows) != 1 else ''}{': ' + summary if summary else ''}; "
    if assets:
        devices += f"{assets} asset{'s' if assets != 1 else ''}; "
    return [
        f"edge-agent monitor  {clock}  {link}  {where}",
        devices + f"{alerts} open alert{'s' if alerts != 1 else ''}",
    ]
