"""Grouping of evaluated recordings by fault family or folder, for ``edge-agent evaluate --group-by``.

A family mapping is an ordered list of ``(glob, family)`` pairs. A glob matches the *end* of a file's path, one
path component per glob component (``valve1/*`` matches ``…/valve1/3.csv`` but not ``…/valve1/a/3.csv``;
``*`` never crosses a ``/``), so the same mapping works whatever folder ``--data`` points at. The first matching
pair wins; a file no pair matches goes to its folder's group, with a warning.
"""

from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

GROUP_BY = ("file", "family", "folder")

# SKAB (github.com/waico/SKAB) experiments by fault family, as ../shared/data/README.md describes them. valve2 is
# in SKAB but not in our data; other SKAB files we do not hold fall back to their folder ("other") with a warning.
SKAB_FAMILIES: tuple[tuple[str, str], ...] = (
    ("valve1/*", "valve1"),
    ("valve2/*", "valve2"),
    ("other/1.csv", "leak-addition"),
    ("other/3.csv", "leak-addition"),
    ("other/5.csv", "rotor-imbalance"),
    ("other/7.csv", "rotor-imbalance"),
    ("other/9.csv", "rotor-imbalance"),
    ("other/10.csv", "water-volume"),
    ("other/12.csv", "cavitation"),
    ("other/14.csv", "hot-water"),
)


class FamiliesError(ValueError):
    """A family mapping file that cannot be used (the message names the file and the problem)."""


def matches(glob: str, path: str | Path) -> bool:
    """True when ``glob`` matches the trailing components of ``path`` component by component."""
    g = [p for p in PurePosixPath(glob.replace("\\", "/")).parts if p != "/"]
    parts = Path(path).as_posix().split("/")
    if not g or len(g) > len(parts):
        return False
    return all(fnmatchcase(name, pat) for name, pat in zip(parts[-len(g):], g))


def folder_of(rel: str, path: Path | None = None) -> str:
    """A file's folder: its folder relative to ``--data``, else the name of the directory it is in."""
    parent = PurePosixPath(rel).parent.as_posix()
    if parent not in ("", "."):
        return parent
    return path.resolve().parent.name if path is not None else "."


def family_of(rel: str, path: Path | None, mapping: Sequence[tuple[str, str]]) -> str | None:
    """The family of the first glob matching the file (tried on the absolute path, else on ``rel``); None if none."""
    target = path.resolve().as_posix() if path is not None else rel
    return next((fam for glob, fam in mapping if matches(glob, target)), None)


def load_families(path: Path) -> list[tuple[str, str]]:
    """A mapping from a JSON or TOML file: ``{"families": {glob: family, ...}}`` or the inner table alone."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise FamiliesError(f"--families {path}: cannot read ({e.strerror})") from None
    try:
        data: Any = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise FamiliesError(f"--families {path}: not valid {kind} ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("families"), dict):
        data = data["families"]
    if not isinstance(data, dict) or not data:
        raise FamiliesError(f"--families {path}: expected a table of glob = family name (under 'families' or alone)")
    bad = [f"{k!r} = {v!r}" for k, v in data.items() if not isinstance(v, str) or not v.strip() or not k.strip()]
    if bad:
        raise FamiliesError(f"--families {path}: every entry must be a glob = a non-empty family name: {', '.join(bad)}")
    return [(str(k), str(v).strip()) for k, v in data.items()]


@dataclass(frozen=True)
class Grouping:
    """How files are grouped: ``by`` one of GROUP_BY, with the family mapping for ``family``."""

    by: str = "file"
    mapping: tuple[tuple[str, str], ...] = SKAB_FAMILIES

    def group(self, rel: str, path: Path | None = None, warn: Callable[[str], None] | None = None) -> str:
        """The group of one file; an unmapped file (``family``) falls back to its folder, with a warning."""
        if self.by == "file":
            return rel
        if self.by == "folder":
            return folder_of(rel, path)
        fam = family_of(rel, path, self.mapping)
        if fam is None:
            fam = folder_of(rel, path)
            msg = f"{rel}: no family matches it, grouped under its folder '{fam}'"
            (warn or log.warning)(msg)
        return fam


GROUP_COLUMNS = ("group", "files", "rows", "TP", "FP", "FN", "TN", "F1", "FAR%", "MAR%", "alerted", "delay_s",
                 "false", "false/file")


def _fmt(v: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def group_table(groups: Sequence[dict[str, Any]], pooled: dict[str, Any], pooled_name: str = "POOLED") -> str:
    """Aligned text table: one line per group (metrics as ``evaluate.totals`` gives them, plus ``group`` and
    ``files``) and a pooled line."""

    def cells(name: str, m: dict[str, Any]) -> list[str]:
        files = m["files"] if isinstance(m["files"], int) else len(m["files"])
        return [
            name, str(files), str(m["scored_rows"]), str(m["tp"]), str(m["fp"]), str(m["fn"]), str(m["tn"]),
            _fmt(m["f1"], ".3f"), _fmt(m["far"], ".1f", 100), _fmt(m["mar"], ".1f", 100),
            f"{m['segments_alerted']}/{m['segments']}", _fmt(m["median_delay_s"], ".1f"), str(m["false_alerts"]),
            _fmt(m["false_alerts_per_file"], ".2f"),
        ]

    lines = [list(GROUP_COLUMNS)] + [cells(g["group"], g) for g in groups] + [cells(pooled_name, pooled)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(GROUP_COLUMNS))]

    def render(line: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(lines[0]), rule, *map(render, lines[1:-1]), rule, render(lines[-1])]) + "\n"
