"""The teach-in check, for every model: does the teach-in hold a fault, a change of operating point or a brief big
event, instead of one normal? (agent/calibrate.py reports it: log, status, ``edge-agent calibrate``.)

Each half of the teach-in is scored (window means, as the generic detector does) against a fit on the other half
(:func:`contamination`); the model card has the numbers behind every constant here. A brief event across the
middle of the teach-in sits in both halves and is not seen (measured, and why other splits were not built: the
model card, "Teach-in checks").
"""

from __future__ import annotations

import numpy as np

from agent.generic import GenericParams, _fit, rolling_means

CONTAMINATION_RATIO = 4.0  # a teach-in half scoring this many thresholds against the other half is not one normal
# ... nor is one scoring LOPSIDED_RATIO thresholds when the other, scored against it, is LOPSIDED_ASYMMETRY times
# quieter: a brief event (a shutdown) in that half widened its scale so much that nothing else looks abnormal
LOPSIDED_RATIO = 2.0
LOPSIDED_ASYMMETRY = 20.0
LOPSIDED_BULK = 2.0  # ... and only when the bulk of that half is like the other's (a half that is simply noisier is not)


def _off(ref: np.ndarray, test: np.ndarray, length: int, p: GenericParams, floor: float) -> tuple[float, int]:
    """How far ``test`` strays from a fit on ``ref``, in thresholds, and on which channel."""
    f = _fit(ref, length, p, floor)
    z = np.abs(rolling_means(test, length) - np.asarray(f["baseline"])) / np.asarray(f["scale"])
    worst = np.unravel_index(int(np.argmax(z)), z.shape)
    return float(z.max()) / f["threshold"], int(worst[1])


def _bulk(part: np.ndarray, ch: int, length: int) -> float:
    """The spread of most of a part's window means on channel ``ch`` (robust to a brief event)."""
    m = rolling_means(part[:, ch:ch + 1], length)[:, 0]
    return float(np.median(np.abs(m - np.median(m))))


def _lopsided(r: float, other: float, event: np.ndarray, clean: np.ndarray, ch: int, length: int) -> bool:
    """``event`` is ``r`` thresholds off ``clean``, which is ``LOPSIDED_ASYMMETRY`` x quieter the other way round,
    and the bulk of ``event`` is like ``clean``'s: a brief big event in it."""
    return (r >= LOPSIDED_RATIO and r >= LOPSIDED_ASYMMETRY * other
            and _bulk(event, ch, length) <= LOPSIDED_BULK * max(_bulk(clean, ch, length), 1e-12))


def contamination(
    normal: np.ndarray, channels: list[str] | None = None, p: GenericParams | None = None, length: int = 20,
    floor: float = 4.0,
) -> tuple[str, tuple[int, int] | None] | None:
    """Does one half of a teach-in look anomalous against the other? (why, the rows to fit on, or None) or None.

    Used for every model's teach-in. Each half is scored (window means, as the generic detector does) against a
    fit on the other half; a half scoring ``CONTAMINATION_RATIO`` thresholds or more means a fault or a change of
    operating point inside the teach-in. On SKAB's 24 clean teach-ins and 23 stretches of its anomaly-free
    recording the largest ratio was 3.4; with a fault inside, up to 68 (about half of the faults reach 4). A half
    at ``LOPSIDED_RATIO`` thresholds while the other, scored against it, is ``LOPSIDED_ASYMMETRY`` times quieter
    counts too: a brief big event (a stop) in that half widened its scale (SKAB's clean ones: at most 6.6 times),
    provided the bulk of its window means spreads no wider than ``LOPSIDED_BULK`` times the other half's (a half
    that is noisier throughout, a busy shift after a quiet one, is normal operation, not an event).
    """
    p = p or GenericParams()
    n = len(normal)
    half = n // 2
    if half < 2 * length:
        return None
    first, second = normal[:half], normal[half:]
    fwd, ch_f = _off(first, second, length, p, floor)
    back, ch_b = _off(second, first, length, p, floor)
    bad_f = fwd >= CONTAMINATION_RATIO or _lopsided(fwd, back, second, first, ch_f, length)
    bad_b = back >= CONTAMINATION_RATIO or _lopsided(back, fwd, first, second, ch_b, length)
    if not (bad_f or bad_b):
        return None
    names = list(channels or []) or [f"#{i}" for i in range(normal.shape[1])]
    if bad_f and not bad_b:
        why = (f"the second half of the teach-in differs from the first ({names[ch_f]}: {fwd:.1f} x the threshold, "
               f"the first against the second {back:.2f} x): a fault or a change of operating point during teach-in; "
               f"fitted on the first half only")
        return why, (0, half)
    if bad_b and not bad_f:
        why = (f"the first half of the teach-in differs from the second ({names[ch_b]}: {back:.1f} x the threshold, "
               f"the second against the first {fwd:.2f} x): a fault or a change of operating point during teach-in; "
               f"fitted on the second half only")
        return why, (half, n)
    ch = ch_f if fwd >= back else ch_b
    why = (f"the teach-in is not stationary ({names[ch]}: {max(fwd, back):.1f} x the threshold between its halves): "
           f"fitted on all of it; repeat the teach-in on normal operation (edge-agent calibrate --reset)")
    return why, None
