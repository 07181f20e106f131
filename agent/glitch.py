"""Glitches in a teach-in: a few readings of a channel far away from all the others, back at once (a sensor's
error value such as -9999 or 65535, a bad decode). Left in, they set the channel's learnt scale: two readings of
-9999 in the teach-in of a temperature at 20 +- 0.5 C made its scale 1,300 times its wander, and the channel never
alerted again, silently. Such readings are reported with the teach-in's warning (log, status, ``edge-agent
calibrate``), naming the channel, the readings and how much wider they make its scale; they are not taken out
(measured, 2026-12-02: taking out a value repeated made a contact's rare 1 on a channel at 0 an "error value", and
that channel then alerted 14 times where it had been quiet; and an operator's ``false_positive`` label folds such
readings in on purpose). ``EDGE_AGENT_CLEANING__RANGES`` refuses an error value for good; a new teach-in then
learns without it.

A glitch is a run of at most ``MAX_RUN`` readings further than ``SIGMAS`` robust sigmas (1.4826 x the median
absolute deviation, or the central 90 % of the readings' spread / 3.29 where most readings are one value) and
``LEVELS`` times the channel's level from the channel's median (a quantised channel's rare next step, 5.1 on a
channel at 5.0, is none), and it is reported only when it widens the channel's scale ``WIDENS`` times or more. On
SKAB's 24 teach-ins (400 readings) nothing is found; on NAB's 21 stand-ins (teach-ins of 1,000 to 3,000 readings)
three network and key-press counters' bursts are reported.

A channel that did not change at all during the teach-in is reported too (:func:`constant`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

SIGMAS = 50.0  # how far from the channel's median a glitch is, in robust sigmas
MAX_RUN = 3  # readings in a row at most: longer is a change of level (a stop), which the teach-in check judges
WIDENS = 10.0  # reported only when the glitches widen the channel's scale this many times or more
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


def check(normal: np.ndarray, names: list[str], scale_of: Callable[[np.ndarray], np.ndarray]) -> str | None:
    """What to tell the operator about the glitches that widen a channel's scale ``WIDENS`` times or more (None:
    nothing). ``scale_of(rows)``: the learnt scale per channel. Nothing is taken out: readings far out may be the
    machine's own (a contact's rare 1 on a channel at 0, a counter's bursts) and an operator's ``false_positive``
    label folds such readings in on purpose; the operator decides (ranges, a new teach-in)."""
    mask = find(normal)
    if not mask.any():
        return None
    held = normal.copy()
    for c in np.flatnonzero(mask.any(axis=0)):
        for i in np.flatnonzero(mask[:, c]):
            held[i, c] = held[i - 1, c] if i > 0 else float(np.median(normal[~mask[:, c], c]))
    widen = scale_of(normal) / scale_of(held)
    said = []
    for c in np.flatnonzero(mask.any(axis=0) & (widen >= WIDENS)):
        values = np.unique(normal[mask[:, c], c])
        n = int(mask[:, c].sum())
        if len(values) == 1 and n >= 2:
            what = f"{n} readings of {values[0]:.6g} (one value again and again: a sensor's error value?)"
        else:
            shown = ", ".join(f"{v:.6g}" for v in normal[mask[:, c], c][:3]) + (f" and {n - 3} more" if n > 3 else "")
            what = f"{n} reading(s) far from all the others ({shown})"
        said.append(f"{names[c]}: {what} widen its scale {widen[c]:.3g} times")
    if not said:
        return None
    return ("; ".join(said) + ": it alerts only on changes that large; if they are not normal operation, refuse them "
            "(EDGE_AGENT_CLEANING__RANGES) and teach in again (edge-agent calibrate --reset)")


def constant(normal: np.ndarray, names: list[str]) -> str | None:
    """The channels that did not change at all during the teach-in: any change of them alerts (their scale is a
    millionth of their level), which is right for a value that should never move and noisy for one that moves in
    normal operation without having done so yet (a setpoint, a status, a slow reading on one quantisation step)."""
    still = [c for c in range(normal.shape[1]) if len(normal) and float(np.ptp(normal[:, c])) == 0.0]
    if not still:
        return None
    shown = ", ".join(f"{names[c]} ({normal[0, c]:.6g})" for c in still[:5]) + (
        f" and {len(still) - 5} more" if len(still) > 5 else "")
    they = "they change" if len(still) > 1 else "it changes"
    return (f"{shown} did not change during the teach-in: any change alerts; if {they} in normal operation, "
            "teach in longer or label the first such alert false_positive")
