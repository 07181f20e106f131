"""Per-sensor ring buffers that cut the cleaned stream into windows, and the feature recipes (pure functions)."""

from __future__ import annotations

import math

import numpy as np

from agent.records import Vector, Window


class Windower:
    """Keeps the last ``length`` vectors of each sensor and yields a Window every ``hop`` vectors once full.

    Runs on the pipeline thread. ``reset(sensor)`` forgets a sensor's buffer (after a gap or a stale channel)
    so that no window ever spans a hole in the data.
    """

    def __init__(self, length: int, hop: int, channels: int):
        if length < 1 or hop < 1:
            raise ValueError("window length and hop must be >= 1")
        self.length, self.hop, self.channels = length, hop, channels
        self._buf: dict[str, np.ndarray] = {}
        self._ts: dict[str, list[float]] = {}
        self._count: dict[str, int] = {}  # vectors seen since the last reset
        self._single = length == 1 and hop == 1

    def push(self, v: Vector) -> Window | None:
        """Add one vector; return a window when one is due."""
        sensor, t = v.sensor, float(v.ts)
        if self._single:  # a window of one reading, every reading: the vector itself (a fresh array per reading)
            if sensor not in self._buf:  # the buffers ``push_rows`` keeps (it reads none of them for length 1)
                self._new(sensor)
            self._count[sensor] += 1
            return Window(sensor, t, t, v.values.reshape(1, -1))
        buf = self._buf.get(sensor)
        if buf is None:
            buf = self._new(sensor)
        ts = self._ts[sensor]
        n = self._count[sensor]
        length = self.length
        i = n % length
        buf[i] = buf[i + length] = v.values
        ts[i] = ts[i + length] = t
        n += 1
        self._count[sensor] = n
        if n < length or (n - length) % self.hop:
            return None
        s = n % length  # the oldest row of the window
        return Window(sensor, ts[s], ts[s + length - 1], buf[s:s + length].copy())

    def _new(self, sensor: str) -> np.ndarray:
        """A sensor's empty buffers: every row (and timestamp, in a list of floats) is written twice, at i and
        i + length, so that a window is one contiguous slice."""
        buf = self._buf[sensor] = np.zeros((2 * self.length, self.channels))
        self._ts[sensor] = [0.0] * (2 * self.length)
        self._count[sensor] = 0
        return buf

    def push_rows(self, sensor: str, ts: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Add ``m`` vectors of one sensor at once (what ``push`` does ``m`` times): the windows due, as (index in
        ``rows`` of the row that completes each, windows (w x length x C, a strided view: do not write to it),
        their start and end timestamps)."""
        length, m = self.length, len(ts)
        buf = self._buf.get(sensor)
        if buf is None:
            buf = self._new(sensor)
        tbuf = self._ts[sensor]
        n0 = self._count[sensor]
        k = min(n0, length - 1)  # earlier rows the first new windows still need
        if k:
            i0 = (n0 - k) % length
            data = np.concatenate((buf[i0:i0 + k], rows))
            stamps = np.concatenate((np.array(tbuf[i0:i0 + k], dtype=np.float64), ts))
        else:
            data, stamps = rows, ts
        counts = np.arange(n0 + 1, n0 + m + 1)
        due = counts >= length
        if self.hop > 1:
            due &= (counts - length) % self.hop == 0
        idx = np.flatnonzero(due)
        if idx.size:
            views = np.lib.stride_tricks.sliding_window_view(data, (length, self.channels))[:, 0]
            first = k + int(idx[0]) - length + 1
            windows = views[first:first + idx.size] if self.hop == 1 else views[k + idx - length + 1]
            starts, ends = stamps[k + idx - length + 1], stamps[k + idx]
        else:
            windows = np.empty((0, length, self.channels))
            starts = ends = np.empty(0)
        tail = min(m, length)
        pos = (n0 + np.arange(m - tail, m)) % length
        buf[pos] = buf[pos + length] = rows[m - tail:]
        for p, t in zip(pos.tolist(), ts[m - tail:].tolist()):
            tbuf[p] = tbuf[p + length] = t
        self._count[sensor] = n0 + m
        return idx, windows, starts, ends

    def reset(self, sensor: str) -> None:
        """Forget one sensor's buffer: its next window starts from the next vector."""
        for d in (self._buf, self._ts, self._count):
            d.pop(sensor, None)


# a window of at most this many values is normalised against mean and std tiled to its shape (kept)
TILE_MAX = 4096


class Normaliser:
    """Per-channel z-score (or identity): ``(x - mean) / std`` with the floor of the sidecar contract."""

    def __init__(self, mean: np.ndarray | None, std: np.ndarray | None):
        self._tiles: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}  # mean and std by window shape
        if mean is None or std is None:
            self.mean = self.std = None
        else:
            self.mean = np.asarray(mean, dtype=np.float64)
            self.std = std_floor(np.asarray(std, dtype=np.float64), self.mean)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.mean is None:
            return np.asarray(x, dtype=np.float64)
        shape = getattr(x, "shape", None)
        tiles = self._tiles.get(shape) or self.tiles(shape)  # type: ignore[arg-type]
        if tiles is None:
            assert self.std is not None  # set with mean (__init__)
            return (x - self.mean) / self.std
        z = np.subtract(x, tiles[0])  # the same numbers as broadcasting; a ufunc on equal shapes is cheaper
        return np.divide(z, tiles[1], z)  # out by position: a keyword costs more than 80 divisions

    def tiles(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
        """Mean and std tiled to ``shape`` (what ``__call__`` subtracts and divides by for it), None when a window
        of this shape is not normalised against tiles (identity, or a shape too large)."""
        if self.mean is None or self.std is None:  # both or neither (__init__)
            return None
        tiles = self._tiles.get(shape)
        if tiles is None and self._tileable(shape):
            tiles = self._tiles[shape] = (np.broadcast_to(self.mean, shape).copy(),
                                          np.broadcast_to(self.std, shape).copy())
        return tiles

    def _tileable(self, shape: tuple[int, ...] | None) -> bool:
        """A row, or a small window of rows, of this normaliser's channels, while fewer than 4 shapes are kept."""
        assert self.mean is not None
        return (shape is not None and len(shape) in (1, 2) and shape[-1:] == self.mean.shape[-1:]
                and math.prod(shape) <= TILE_MAX and len(self._tiles) < 4)

    @classmethod
    def fit(cls, data: np.ndarray) -> "Normaliser":
        """Fit on rows of raw vectors (population std)."""
        return cls(data.mean(axis=0), data.std(axis=0))


def std_floor(std: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """A constant channel must not divide by zero: floor std at 1e-6 x max(1, |mean|)."""
    return np.maximum(std, 1e-6 * np.maximum(1.0, np.abs(mean)))


FEATURES = {  # the recipes: ``raw`` flattens a window time-major, ``last`` keeps the newest row
    "raw": lambda window_norm: window_norm.reshape(-1),
    "last": lambda window_norm: window_norm[-1],
}
FEATURE_RECIPES = tuple(FEATURES)


def features(recipe: str, window_norm: np.ndarray) -> np.ndarray:
    """The model input for a normalised window (length x C): ``raw`` flattens it time-major, ``last`` keeps the newest row."""
    f = FEATURES.get(recipe)
    if f is None:
        raise ValueError(f"unknown feature recipe {recipe!r}")
    return f(window_norm)


def feature_size(recipe: str, length: int, channels: int) -> int:
    """How many values ``features`` returns for this recipe."""
    return length * channels if recipe == "raw" else channels
