"""Glitches in a teach-in: a few readings of a channel far away from all the others, back at once (a sensor's
error value such as -9999 or 65535, a bad decode). Left in, they set the channel's learnt scale: two readings of
-9999 in a temperature's teach-in made its scale 500 times its real wander, and the channel never alerted again,
silently. Such readings are reported (the teach-in's warning: log, status, ``edge-agent calibrate``). Where they are
one value repeated, an error value, they are also taken out of what the generic detector learns (held at the
reading before them); readings far out at differing values may be the machine's own (the bursts of a network
counter) and stay in. ``EDGE_AGENT_CLEANING__RANGES`` refuses an error value for good.

A glitch is a run of at most ``MAX_RUN`` readings further than ``SIGMAS`` robust sigmas (1.4826 x the median
absolute deviation, or the central 90 % of the readings' spread / 3.29 where most readings are one value) and
``LEVELS`` times the channel's level from the channel's median (a quantised channel's rare next step, 5.1 on a
channel at 5.0, is no glitch: an operator's ``false_positive`` label folds it in), and it is acted on only when it widens the channel's scale
``WIDENS`` times or more. On SKAB's 24 teach-ins (400 readings) nothing is found; on NAB's 21 stand-ins (teach-ins
of 1,000 to 3,000 readings) three network and key-press counters' bursts are reported and left in.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

SIGMAS = 50.0  # how far from the channel's median a glitch is, in robust sigmas
MAX_RUN = 3  # readings in a row at most: longer is a change of level (a stop), which the teach-in check judges
WIDENS = 10.0  # acted on only when the glitches widen the channel's scale this many times or more
LEVELS = 10.0  # ... and at least this many times the channel's level (its median) away from it


def _runs(far: np.ndarray) -> np.ndarray:
    """The readings of ``far`` that belong to runs of at most MAX_RUN far readings."""
    out = np.zeros_like(far)
    i, n = 0, len(far)
    while i < n:
        if not far[i]:
            i += 1
            continue
        j = i
        while j < n and far[j]:
            j += 1
        if j - i <= MAX_RUN:
            out[i:j] = True
        i = j
    return out


def find(normal: np.ndarray) -> np.ndarray:
    """A boolean mask of the glitch readings of each channel (rows x channels)."""
    mask = np.zeros(normal.shape, dtype=bool)
    for c in range(normal.shape[1]):
        x = normal[:, c]
        med = float(np.median(x))
        dev = np.abs(x - med)
        lo, hi = np.percentile(x, [5, 95])
        # robust sigma: the median absolute deviation's, or (mostly one value: a quantised channel on one step)
        # the central 90 %'s as a normal distribution's, or (constant but for the glitches) a millionth of the level
        s = max(1.4826 * float(np.median(dev)), float(hi - lo) / 3.29, 1e-6 * max(1.0, abs(med)))
        far = (dev > SIGMAS * s) & (dev > LEVELS * max(abs(med), s))  # and absurd for the channel's level:
        # a quantised channel's rare next step (5.1 on a channel at 5.0) is neither, an error value (-9999) both
        if far.any():
            mask[:, c] = _runs(far)
    return mask


def remove(normal: np.ndarray, names: list[str], scale_of: Callable[[np.ndarray], np.ndarray]
           ) -> tuple[np.ndarray, str | None]:
    """``normal`` with a channel's glitches held at the reading before them where they are one value repeated (a
    sensor's error value), and what was found (None: nothing that widens a scale ``WIDENS`` times).
    ``scale_of(rows)``: the learnt scale per channel, to judge how much the glitches widen it. Glitches of differing
    values may be real (the bursts of a network counter): they are reported and left in."""
    mask = find(normal)
    if not mask.any():
        return normal, None
    held = normal.copy()
    for c in np.flatnonzero(mask.any(axis=0)):
        for i in np.flatnonzero(mask[:, c]):
            held[i, c] = held[i - 1, c] if i > 0 else float(np.median(normal[~mask[:, c], c]))
    widen = scale_of(normal) / scale_of(held)
    out, left_out, kept = normal, [], []
    for c in np.flatnonzero(mask.any(axis=0) & (widen >= WIDENS)):
        values = np.unique(normal[mask[:, c], c])
        n = int(mask[:, c].sum())
        if len(values) == 1 and n >= 2:  # one value, again and again: an error value, not the machine
            if out is normal:
                out = normal.copy()
            out[:, c] = held[:, c]
            left_out.append(f"{names[c]}: {n} readings of {values[0]:.6g}, which would have widened its scale "
                            f"{widen[c]:.3g} times")
        else:
            shown = ", ".join(f"{v:.6g}" for v in normal[mask[:, c], c][:3]) + (f" and {n - 3} more" if n > 3 else "")
            kept.append(f"{names[c]}: {n} reading(s) far from all the others ({shown}) widen its scale "
                        f"{widen[c]:.3g} times")
    said = []
    if left_out:
        said.append("left out of the teach-in, a sensor's error value (EDGE_AGENT_CLEANING__RANGES refuses it for "
                    "good): " + "; ".join(left_out))
    if kept:
        said.append("; ".join(kept) + ": if that is not normal operation, refuse them (EDGE_AGENT_CLEANING__RANGES) "
                    "and teach in again (edge-agent calibrate --reset)")
    return out, "; ".join(said) or None
