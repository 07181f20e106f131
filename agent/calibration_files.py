"""The teach-in's state files read back for the :class:`agent.calibrate.Calibrator`: the readings that feedback
folded in (``calibration-feedback.npz``), a running teach-in's checkpoint (``teach-in.npz``), the data times of a
stored file.

What becomes of a file that cannot be used is the :class:`Unusable` policy's: the agent sets it aside
(``<name>.corrupt-<time>``, agent.files.set_aside) and starts afresh; ``edge-agent calibrate`` without ``--reset``
only reads (an agent may be running on the same files), so it notes the file and the reason, leaves the file in
place, and the command reports it.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.calibration import valid_sources
from agent.files import atomic_write, set_aside
from agent.logsafe import clip

log = logging.getLogger("agent.calibrate")


class Unusable:
    """An unusable state file: set aside (the agent), or noted in ``found`` and left in place (``read_only``)."""

    def __init__(self, read_only: bool = False):
        self.read_only = read_only
        self.found: list[tuple[Path, str]] = []  # (file, reason) left in place by a read-only reader

    def __call__(self, path: Path, why: str) -> None:
        if self.read_only:
            self.found.append((path, why))
        else:
            set_aside(path, why)


def stored_times(z: "np.lib.npyio.NpzFile", n: int) -> np.ndarray:
    """The ``ts`` array of a stored file, or NaN for each of its ``n`` rows (stored before times were kept)."""
    if "ts" in z.files:
        t = np.asarray(z["ts"], dtype=np.float64).reshape(-1)
        if len(t) == n:
            return t
    return np.full(n, np.nan)


def read_folds(path: Path, width: int, unusable: Unusable) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Folded alerts: id -> (readings, their data times, NaN where unknown); empty without the file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            ids = [str(i) for i in z["ids"]]
            lengths = [int(n) for n in z["lengths"]]
            rows = np.asarray(z["rows"], dtype=np.float64)
            times = stored_times(z, len(rows))
    except FileNotFoundError:
        return {}
    except Exception as e:  # noqa: BLE001 - numpy raises many kinds for a damaged file
        unusable(path, f"{clip(e, 200)}; the readings feedback folded in are forgotten")
        return {}
    if (rows.ndim != 2 or rows.shape[1] != width or not np.isfinite(rows).all() or len(ids) != len(lengths)
            or sum(lengths) != len(rows) or any(n < 0 for n in lengths)):
        unusable(path, "wrong shape or not finite; the readings feedback folded in are forgotten")
        return {}
    out, start = {}, 0
    for i, n in zip(ids, lengths):
        out[i] = (rows[start:start + n], times[start:start + n])
        start += n
    return out


def write_folds(path: Path, folds: dict[str, tuple[np.ndarray, np.ndarray]], width: int) -> None:
    if not folds:
        path.unlink(missing_ok=True)
        return
    buf = io.BytesIO()
    np.savez(buf, ids=np.asarray(list(folds)), lengths=np.asarray([len(r) for r, _ in folds.values()]),
             rows=np.vstack([r.reshape(-1, width) for r, _ in folds.values()]),
             ts=np.concatenate([t for _, t in folds.values()]))
    atomic_write(path, buf.getvalue())


def checkpoint_sources(z: "np.lib.npyio.NpzFile") -> dict[str, list[str]] | None:
    """The gathered channels' sensors a checkpoint keeps (None: not gathered, or kept before they were); ValueError
    when they are not JSON or not such a map (the checkpoint is then unusable: its channels are gathered again)."""
    if "sources" not in z.files:
        return None
    try:
        sources = json.loads(str(z["sources"]))
    except ValueError:
        raise ValueError("its gathered channels' sensors (sources) are not JSON") from None
    if sources is not None and not valid_sources(sources):
        raise ValueError("sources must map channels to lists of sensor ids")
    return sources


@dataclass
class Checkpoint:
    """A running teach-in as last kept (Calibrator.checkpoint)."""

    normal: np.ndarray
    ts: np.ndarray
    runs: np.ndarray
    stride: int
    seen: int
    first_ts: float | None
    last_ts: float | None


def read_checkpoint(path: Path, channels: list[str], sha256: str, unusable: Unusable) -> Checkpoint | None:
    """The teach-in a restart interrupted, when it was for this model (``sha256``) and ``channels``; else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            stored, sha = [str(c) for c in z["channels"]], str(z["sha256"])
            normal = np.asarray(z["normal"], dtype=np.float64)
            ts = np.asarray(z["ts"], dtype=np.float64).reshape(-1)
            runs = np.asarray(z["runs"], dtype=np.int64).reshape(-1)
            stride, seen = (int(x) for x in z["counts"])
            first, last = (float(x) for x in z["span"])
            checkpoint_sources(z)
    except Exception as e:  # noqa: BLE001 - numpy raises many kinds for a damaged file (zipfile, pickle, EOF)
        unusable(path, f"the running teach-in is unreadable: {clip(e, 200)}; teach-in starts again")
        return None
    if stored != channels or sha != sha256:  # the file is replaced by this teach-in's checkpoint
        log.info("the teach-in interrupted by the restart was for another model or other channels: it starts again")
        return None
    if (normal.ndim != 2 or normal.shape[1] != len(channels) or not np.isfinite(normal).all()
            or len(ts) != len(normal) or len(runs) != len(normal) or stride < 1 or seen < len(normal)):
        unusable(path, "the running teach-in's readings are of the wrong shape or not finite; teach-in starts again")
        return None
    return Checkpoint(normal, ts, runs, stride, seen, first if math.isfinite(first) else None,
                      last if math.isfinite(last) else None)
