"""A daily profile for the generic detector: the shape of a day, learnt at teach-in, taken out before scoring.

A sensor read every few minutes for weeks (a temperature, a load) often follows the clock: warmer by day, busier
on a shift. Its daily swing is normal, but a level detector sees it as wander and gets a scale as wide as the
swing, so that a day that goes wrong inside the usual range (a peak twice as high, a peak missing, a flat day) is
invisible. When the teach-in spans at least ``MIN_DAYS`` days, each channel's profile over the day
(``BINS`` bins of clock time, each day taken relative to its own mean) is fitted; it is kept only for a channel
where it holds from day to day: a profile fitted on the even days must remove at least ``GAIN`` of the variance
of the odd days, and the other way round. The detector then works on ``reading - profile(time of day)``.

Nothing here was tuned on labelled data: one day, 48 bins (half an hour), three days, a quarter of the variance
were written down before any recording was scored (models/README.md, generic: "Method" and "The daily profile on
NAB"). The scorer takes out the profile's mean over each window's span of data time, as the teach-in took it out
of every reading at the reading's own time.
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

DAY = 86_400.0  # the period: clock days (UTC, or the zone's clock: ``local``)
BINS = 48  # half-hour bins
MIN_DAYS = 3.0  # a teach-in shorter than this has no profile
GAIN = 0.25  # share of the held-out days' variance a channel's profile must remove to be kept
FINE = 1440  # the profile as the scorer reads it: one value per minute, linear between the bins' centres
MIN_COVER = 0.8  # a day is used for the fit when its readings span this share of it


UTC = "UTC"
_STEP = 900.0  # local offsets are looked up per quarter hour of data time (every zone changes on a quarter hour)


@lru_cache(maxsize=16)
def zone(name: str) -> ZoneInfo | None:
    """The time zone the profile's clock follows (None for UTC); ValueError naming an unknown one."""
    if name == UTC:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as e:  # OSError: a folder of the database ("Europe")
        raise ValueError(f"unknown time zone {name!r}: an IANA name such as Europe/Berlin, or UTC") from e


def local(ts: np.ndarray, tz: ZoneInfo | None) -> np.ndarray:
    """Data times (epoch s) as seconds of the zone's clock time (epoch s plus the UTC offset in force then), so that
    a day follows the machine's clock across a daylight-saving change; ``ts`` itself for UTC."""
    ts = np.asarray(ts, dtype=np.float64)
    if tz is None or ts.size == 0:
        return ts
    quarters = np.floor(ts / _STEP)
    if ts.size <= 4:  # one window's start and end: no sorting
        return ts + np.array([_offset(int(q), tz) for q in quarters.flat]).reshape(ts.shape)
    keys, where = np.unique(quarters, return_inverse=True)
    offsets = np.array([_offset(int(k), tz) for k in keys])
    return ts + offsets[where.reshape(ts.shape)]


@lru_cache(maxsize=1024)
def _offset(quarter: int, tz: ZoneInfo) -> float:
    """The zone's UTC offset (s) in the given quarter hour of data time."""
    off = datetime.fromtimestamp(quarter * _STEP, timezone.utc).astimezone(tz).utcoffset()
    return off.total_seconds() if off is not None else 0.0


def share(table: np.ndarray, cum: np.ndarray, starts: np.ndarray, ends: np.ndarray, period: float,
          tz: ZoneInfo | None) -> np.ndarray:
    """:func:`window_share` on the zone's clock: each window's span in clock time, and a window across a change of
    the zone's offset split there (its clock time jumps: an hour repeated, or an hour skipped)."""
    starts = np.asarray(starts, dtype=np.float64)
    ends = np.asarray(ends, dtype=np.float64)
    ls, le = local(starts, tz), local(ends, tz)
    out = window_share(table, cum, ls, le, period)
    if tz is None:
        return out
    for i in np.flatnonzero((ls - starts) != (le - ends)):  # the few windows across a change
        s, e, after = float(starts[i]), float(ends[i]), float(le[i] - ends[i])
        c = next((q * _STEP for q in range(int(s // _STEP) + 1, int(e // _STEP) + 1) if _offset(q, tz) == after), e)
        before = window_share(table, cum, ls[i:i + 1], ls[i:i + 1] + (c - s), period)[0] * (c - s)
        rest = window_share(table, cum, np.array([c + after]), le[i:i + 1], period)[0] * (e - c)
        out[i] = (before + rest) / (e - s)
    return out


def fit_profile(x: np.ndarray, ts: np.ndarray, period: float = DAY) -> np.ndarray | None:
    """The (BINS, channels) profile of ``x`` (rows of readings at times ``ts``), zero for the channels where it does
    not hold; None when the teach-in is too short, has no time stamps, or no channel keeps a profile."""
    x = np.asarray(x, dtype=np.float64)
    ts = np.asarray(ts, dtype=np.float64)
    if period <= 0 or ts.shape != (len(x),) or len(x) < 2 * BINS or not np.isfinite(ts).all():
        return None
    if ts.max() - ts.min() < MIN_DAYS * period:  # readings of several sensors may interleave out of order
        return None
    day = np.floor(ts / period).astype(np.int64)
    b = (np.floor((ts % period) / period * BINS).astype(np.int64)) % BINS
    resid = np.full_like(x, np.nan)
    for d in np.unique(day):
        rows = day == d
        t = ts[rows]
        if t.max() - t.min() >= MIN_COVER * period:  # whole days only: a partial day's mean is not its level
            resid[rows] = x[rows] - x[rows].mean(axis=0)
    use = np.isfinite(resid[:, 0])
    if len(np.unique(day[use])) < 2:
        return None
    even = use & (day % 2 == 0)
    odd = use & (day % 2 == 1)
    if not even.any() or not odd.any():
        return None
    keep = (_gain(resid, b, even, odd) >= GAIN) & (_gain(resid, b, odd, even) >= GAIN)  # each way round
    if not keep.any():
        return None
    profile = _bin_means(resid, b, use)
    profile[:, ~keep] = 0.0
    return profile


def _bin_means(resid: np.ndarray, b: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Mean residual per bin over ``rows``; an empty bin takes the mean of its neighbours (0 when all are empty)."""
    c = resid.shape[1]
    sums = np.zeros((BINS, c))
    counts = np.zeros(BINS)
    np.add.at(sums, b[rows], resid[rows])
    np.add.at(counts, b[rows], 1.0)
    out = np.zeros((BINS, c))
    have = counts > 0
    out[have] = sums[have] / counts[have, None]
    if not have.all() and have.any():
        centres = np.flatnonzero(have)
        for ch in range(c):
            out[~have, ch] = np.interp(np.flatnonzero(~have), centres, out[have, ch], period=BINS)
    return out


def _gain(resid: np.ndarray, b: np.ndarray, fit_rows: np.ndarray, test_rows: np.ndarray) -> np.ndarray:
    """Per channel, the share of ``test_rows``' variance (about each day's mean) that the profile fitted on
    ``fit_rows`` takes out; 0 for a channel with none (flat within its days)."""
    p = _bin_means(resid, b, fit_rows)
    total = (resid[test_rows] ** 2).sum(axis=0)
    left = ((resid[test_rows] - p[b[test_rows]]) ** 2).sum(axis=0)
    return np.where(total > 0, 1.0 - left / np.where(total > 0, total, 1.0), 0.0)


def fine(profile: np.ndarray) -> np.ndarray:
    """The profile at every minute of the day (FINE, channels): linear between the bins' centres, around the clock."""
    profile = np.asarray(profile, dtype=np.float64)
    centres = (np.arange(BINS) + 0.5) / BINS
    at = (np.arange(FINE) + 0.5) / FINE
    return np.stack([np.interp(at, centres, profile[:, ch], period=1.0) for ch in range(profile.shape[1])], axis=1)


def index(ts: float | np.ndarray, period: float = DAY) -> np.ndarray | int:
    """Row of :func:`fine`'s table for time(s) ``ts``."""
    return (np.floor((np.asarray(ts) % period) / period * FINE).astype(np.int64)) % FINE


def cumulative(table: np.ndarray) -> np.ndarray:
    """(FINE + 1, channels): the running sums of :func:`fine`'s table, 0 first (for :func:`window_share`)."""
    return np.vstack([np.zeros((1, table.shape[1])), np.cumsum(table, axis=0)])


def window_share(table: np.ndarray, cum: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                 period: float = DAY) -> np.ndarray:
    """(N, channels): the profile's mean over each window's span of data time, ``starts[i]`` to ``ends[i]``: what it
    adds to the window's mean, since the teach-in took it out of every reading at the reading's own time. The
    same function for one window and for a block, so that both give the same numbers."""
    starts = np.asarray(starts, dtype=np.float64)
    width = (np.asarray(ends, dtype=np.float64) - starts) / period * FINE  # in rows of the table
    u0 = (starts % period) / period * FINE
    area = _area(table, cum, u0 + width) - _area(table, cum, u0)
    point = table[np.minimum(np.floor(u0).astype(np.int64), FINE - 1)]
    wide = width > 0
    return np.where(wide[:, None], area / np.where(wide, width, 1.0)[:, None], point)


def _area(table: np.ndarray, cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The table's integral from row 0 to position ``u`` (rows, may run past a day: whole days added)."""
    days = np.floor(u / FINE)
    r = u - days * FINE
    i = np.minimum(np.floor(r).astype(np.int64), FINE - 1)
    return days[:, None] * cum[FINE] + cum[i] + (r - i)[:, None] * table[i]
