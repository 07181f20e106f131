"""The alert state machine and summaries."""

from __future__ import annotations

import numpy as np
import pytest

from agent.counters import Counters
from agent.decide import CLEARED, RAISED, AlertMachine, AlertPolicy, Decisions
from agent.summary import Summariser
from agent.records import Inference, Vector, Window


def _inf(score: float, t: float = 0.0) -> Inference:
    return Inference(window=Window("s", t, t, np.zeros((1, 1))), score=score)


def _run(machine, scores):
    out = []
    for i, s in enumerate(scores):
        t = machine.update(_inf(s, i))
        out.append(t.state if t else None)
    return out


@pytest.mark.parametrize(
    "k, n, scores, expected",
    [
        # 3 of 5 over 1.0 raises on the third over-threshold window
        (3, 5, [2, 0, 2, 0, 2], [None, None, None, None, RAISED]),
        (3, 5, [2, 0, 0, 0, 2, 0, 0, 0, 2], [None] * 9),  # never 3 within 5
        (1, 1, [0.5, 1.5, 1.5, 0.5], [None, RAISED, None, CLEARED]),
        # hysteresis: 0.9 is under the threshold but not under 1.0 x 0.8, so the alert stays raised
        (1, 1, [2, 0.9, 0.9, 0.7], [RAISED, None, None, CLEARED]),
        (2, 3, [2, 2, 0.5, 2, 0.5], [None, RAISED, None, None, CLEARED]),
        # exactly at the threshold is not over it
        (1, 1, [1.0], [None]),
    ],
)
def test_k_of_n_and_hysteresis(k, n, scores, expected):
    assert _run(AlertMachine("s", 1.0, k, n, 0.8), scores) == expected


def test_raise_and_clear_share_the_alert_id_and_new_alert_gets_new_id():
    m = AlertMachine("s", 1.0, 1, 1, 0.8)
    r1 = m.update(_inf(2))
    c1 = m.update(_inf(0))
    r2 = m.update(_inf(3))
    assert r1.alert_id == c1.alert_id != r2.alert_id
    assert c1.peak_score == 2


def test_invalid_k_n():
    with pytest.raises(ValueError):
        AlertMachine("s", 1.0, 4, 3, 0.8)


def test_summary_period_and_statistics():
    s = Summariser(["a", "b"], interval_s=10)
    for t in range(12):
        if s.due(float(t)):
            first = s.take(float(t), {"non_numeric": 2})
            break
        s.add_vector(Vector(float(t), np.array([t, -t], dtype=float)))
        s.add_score(float(t))
    assert first["period_start"] == 0 and first["period_end"] == 10
    assert first["readings"] == 10 and first["windows"] == 10
    assert first["channels"]["a"] == {"count": 10, "min": 0, "mean": 4.5, "max": 9}
    assert first["channels"]["b"]["min"] == -9
    assert first["rejected"] == {"non_numeric": 2}
    assert first["score"]["max"] == 9 and first["score"]["p50"] == pytest.approx(4.5)
    empty = s.take(None, {})
    assert empty["readings"] == 0 and empty["score"] is None and empty["channels"]["a"] == {"count": 0}


def test_summary_keeps_a_bounded_numpy_buffer_of_scores_and_the_max_of_all():
    """A busy period (more windows than SCORES_KEPT): the percentiles come from every 2nd, 4th, … window of the
    whole period, held as float64 (8 bytes each, not a Python float apiece) — not from its first minutes only; the
    max from every window; block and single adds keep the same scores."""
    from agent.summary import SCORES_KEPT

    n = 5 * SCORES_KEPT + 123
    scores = np.random.default_rng(7).permutation(n).astype(float)  # every value once: the median is known
    singles, blocks = Summariser(["a"], interval_s=1e9), Summariser(["a"], interval_s=1e9)
    for s in (singles, blocks):
        s.add_vector(Vector(0.0, np.array([1.0])))
    for x in scores:
        singles.add_score(float(x))
    i, sizes = 0, [1, 7, 500, 3, SCORES_KEPT + 11, 2, 64]
    while i < n:  # blocks of every size, across the halvings
        k = sizes[i % len(sizes)]
        blocks.add_scores(scores[i:i + k])
        i += k
    for s in (singles, blocks):
        kept = s.scores
        assert s.windows == n and SCORES_KEPT // 2 <= len(kept) <= SCORES_KEPT
        assert kept.dtype == np.float64 and s._buf.nbytes <= 8 * SCORES_KEPT  # noqa: SLF001
        stride = s._stride  # noqa: SLF001
        assert kept.tolist() == scores[::stride].tolist()  # windows 0, s, 2s, … to the end of the period
    big = singles.take(1.0, {})
    assert big["windows"] == n and big["score"]["max"] == n - 1
    assert abs(big["score"]["p50"] - (n - 1) / 2) < 0.02 * n and abs(big["score"]["p95"] - 0.95 * (n - 1)) < 0.02 * n
    singles.add_scores(np.array([7.0, 2.0]))  # after the take: a fresh period, a small buffer again
    assert singles.scores.tolist() == [7.0, 2.0] and singles._buf.nbytes < 8 * SCORES_KEPT  # noqa: SLF001
    assert singles.take(2.0, {})["score"]["max"] == 7.0


def test_a_quiet_period_keeps_every_score():
    s = Summariser(["a"], interval_s=1e9)
    s.add_vector(Vector(0.0, np.array([1.0])))
    s.add_score(3.0)
    s.add_scores(np.arange(2000, dtype=float))
    s.add_score(0.5)
    assert s.scores.tolist() == [3.0, *range(2000), 0.5]


@pytest.mark.parametrize(
    "cooldown, limit, events, expected",
    [
        # (kind, sensor, ts): raises allowed or not
        (60, 0, [("clear", "a", 0), ("raise", "a", 30), ("raise", "a", 61), ("raise", "b", 31)], [False, True, True]),
        (0, 2, [("raise", "a", 0), ("raise", "a", 10), ("raise", "a", 20), ("raise", "a", 3600)], [True, True, False, True]),
        (0, 0, [("raise", "a", t) for t in range(100)], [True] * 100),
        # data time stepped back two hours (a clock step): neither the cooldown nor the hour holds alerts back
        (60, 0, [("clear", "a", 10_000), ("raise", "a", 2_810)], [True]),
        (0, 2, [("raise", "a", 10_000), ("raise", "a", 10_010), ("raise", "a", 2_820), ("raise", "a", 2_830),
                ("raise", "a", 2_840)], [True, True, True, True, False]),
        # ... but two sensors whose clocks are a few seconds apart do not get round the limit
        (0, 2, [("raise", "a", 100), ("raise", "b", 97), ("raise", "a", 200), ("raise", "b", 197)],
         [True, True, False, False]),
        # ... and a step back of more than the hour from the newest raise is noticed whatever their order
        (0, 2, [("raise", "a", 10_000), ("raise", "b", 9_880), ("raise", "a", 6_300)], [True, True, True]),
    ],
)
def test_policy_cooldown_and_rate_limit(cooldown, limit, events, expected):
    from agent.decide import AlertPolicy

    p = AlertPolicy(cooldown, limit)
    got = []
    for kind, sensor, ts in events:
        if kind == "clear":
            p.cleared(sensor, ts)
        else:
            got.append(p.allow(sensor, ts))
    assert got == expected


# -- issue 12 item 1: a new threshold re-judges the debounce, it does not forget it ----------------------------


def test_retune_rejudges_the_recent_scores_instead_of_forgetting_them():
    m = AlertMachine("s", 1.0, 3, 5, 0.8)
    assert _run(m, [2, 2]) == [None, None]  # 2 of the 3 needed
    m.retune(1.5, 3, 5, 0.8)  # still under the scores: the two count, the next one raises
    assert m.update(_inf(2)).state == RAISED
    # a threshold above the scores, with the alert raised: it stays raised until k windows are under the new level
    m.retune(10.0, 3, 5, 0.8)
    assert _run(m, [7, 7]) == [None, None] and m.active
    assert m.update(_inf(7)).state == CLEARED  # 3 of 5 under 10 x 0.8: cleared, never dropped silently


def test_retune_to_a_shorter_debounce_keeps_the_newest_scores():
    m = AlertMachine("s", 1.0, 3, 5, 0.8)
    _run(m, [2, 0, 2])
    m.retune(1.0, 2, 2, 0.8)  # the last two: 0 and 2 -> one over; the next over raises
    assert m.update(_inf(2)).state == RAISED
    with pytest.raises(ValueError):
        m.retune(1.0, 3, 2, 0.8)


def _state(m: AlertMachine) -> tuple:
    return (m.active, list(m._scores), list(m._receded), m._peak, m._floor)  # noqa: SLF001


@pytest.mark.parametrize("seed", range(40))
def test_first_change_and_absorb_do_what_update_does_window_by_window(seed):
    """The batched decision (agent.pipeline_block): absorb the windows before first_change, update that one; the
    same transitions at the same windows and the same state as update on each window, with floors, receded
    clears, NaN scores and a threshold changed in between."""
    rng = np.random.default_rng(seed)
    k, n = int(rng.integers(1, 4)), int(rng.integers(3, 7))
    n = max(n, k)
    args = dict(threshold=1.0, k=k, n=n, clear_ratio=float(rng.uniform(0.5, 1.0)),
                recede_ratio=float(rng.choice([0.0, 0.3, 0.6])), refractory=int(rng.choice([1, 5, 50])))
    one, many = AlertMachine("s", **args), AlertMachine("s", **args)
    seen = 0
    for part, scale in enumerate([1.0, 3.0, 0.3, rng.choice([0.5, 3.0]), 3.0, 0.5]):
        scores = rng.gamma(2.0, 0.4, size=int(rng.integers(1, 300))) * scale
        scores[rng.random(len(scores)) < 0.02] = np.nan
        want = [(i, t.state, repr(t.peak_score), t.receded) for i, s in enumerate(scores)
                if (t := one.update(_inf(float(s)))) is not None]
        got = []
        i = 0
        while i < len(scores):
            quiet = many.first_change(scores[i:])
            many.absorb(scores[i:i + quiet])
            i += quiet
            if i < len(scores):
                t = many.update(_inf(float(scores[i])))
                assert t is not None  # first_change names only windows that act
                got.append((i, t.state, repr(t.peak_score), t.receded))
                i += 1
        assert got == want
        seen += len(want)
        (a1, s1, r1, p1, f1), (a2, s2, r2, p2, f2) = _state(one), _state(many)
        assert (a1, r1, repr(p1), f1) == (a2, r2, repr(p2), f2)
        assert np.array_equal(np.array(s1), np.array(s2), equal_nan=True)
        if part == 3:
            for m in (one, many):
                m.retune(0.8, k, n, args["clear_ratio"])
    assert seen >= 2  # raised and cleared at least once


@pytest.mark.parametrize("seed", range(40))
def test_update_without_a_count_at_a_known_quiet_level_acts_as_counting_every_window(seed):
    """``update`` skips counting the kept scores when the window's level is the last window's and the new score is
    not over it: the same transitions at the same windows as a machine made to count at every window, with floors
    (a decaying level), receded clears, NaN scores, retune, reset and absorb in between."""
    rng = np.random.default_rng(seed)
    k, n = int(rng.integers(1, 4)), int(rng.integers(3, 7))
    n = max(n, k)
    args = dict(threshold=1.0, k=k, n=n, clear_ratio=float(rng.uniform(0.5, 1.0)),
                recede_ratio=float(rng.choice([0.0, 0.3, 0.6])), refractory=int(rng.choice([1, 5, 50])))
    fast, counting = AlertMachine("s", **args), AlertMachine("s", **args)
    seen = skipped = 0
    for part, scale in enumerate([1.0, 3.0, 0.3, rng.choice([0.5, 3.0]), 3.0, 0.5, 2.0]):
        scores = rng.gamma(2.0, 0.4, size=int(rng.integers(1, 300))) * scale
        scores[rng.random(len(scores)) < 0.02] = np.nan
        for i, s in enumerate(scores.tolist()):
            counting._quiet = None  # noqa: SLF001 - this one counts the kept scores at every window
            level = fast._floor if fast._floor > fast.threshold else fast.threshold  # noqa: SLF001
            would_skip = not fast.active and fast._quiet == level and not s > level  # noqa: SLF001
            skipped += would_skip
            a, b = fast.update(_inf(s)), counting.update(_inf(s))
            assert (a is None) == (b is None), (part, i)
            if a is not None:
                assert (a.state, repr(a.peak_score), a.receded) == (b.state, repr(b.peak_score), b.receded)
                seen += 1
        if part == 2:
            for m in (fast, counting):
                m.retune(0.6, k, n, args["clear_ratio"])  # the kept scores judged again: a raise with no new one
        if part == 4:
            for m in (fast, counting):
                m.reset()
        if part == 5:
            more = rng.gamma(2.0, 0.4, size=5) * 0.2
            for m in (fast, counting):
                m.absorb(more[: m.first_change(more)])
    assert seen >= 2 and skipped > 20  # raised and cleared, and the shortcut was taken


def test_retune_to_a_smaller_k_raises_on_the_kept_scores_at_the_same_threshold():
    """The kept scores are judged again after ``retune`` even when the level did not move (the shortcut of a
    known quiet level is forgotten): one score over it, k lowered to 1, the next window under it raises."""
    m = AlertMachine("s", threshold=1.0, k=2, n=4, clear_ratio=0.5)
    for s in (1.5, 0.1, 0.1):
        assert m.update(_inf(s)) is None
    m.retune(1.0, 1, 4, 0.5)
    t = m.update(_inf(0.1))
    assert t is not None and t.state == RAISED and t.peak_score == 0.1


def test_summary_statistics_of_many_vectors_and_blocks_are_the_sequential_sums_bit_for_bit():
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(501, 2)) * np.array([1e6, 1e-3]) + np.array([1e9, 0.1])  # sums that round
    s = Summariser(["a", "b"], interval_s=1e9)
    total = np.zeros(2)
    i = 0
    for step in (1, 70, 1, 1, 130, 1, 200, 97):  # vectors one at a time (held, added 64 at a time) and blocks
        if step == 1 or step == 97:
            for k in range(i, i + step):
                s.add_vector(Vector(float(k), rows[k].copy()))
        else:
            s.add_rows(np.arange(i, i + step, dtype=float), rows[i:i + step])
        i += step
    for k in range(i):
        total = total + rows[k]  # one vector after the other
    out = s.take(None, {})
    assert out["readings"] == i == 501
    for j, c in enumerate("ab"):
        assert out["channels"][c]["mean"] == float(total[j] / i)
        assert out["channels"][c]["min"] == float(rows[:i, j].min()) and out["channels"][c]["max"] == float(rows[:i, j].max())
    assert s.take(None, {})["channels"]["a"] == {"count": 0}  # nothing held over into the next period


@pytest.mark.parametrize("zeros", [[-0.0, -0.0, 0.0, 0.0, -0.0, 0.0, 0.0, -0.0, -0.0], [0.0] * 8 + [-0.0],
                                   [-0.0] * 300 + [0.0] * 5, [0.0, -0.0] * 200])
def test_summary_min_and_max_of_zeros_keep_the_sign_one_vector_at_a_time_gives(zeros):
    """An idle sensor printing "%.1f" sends -0.0 and 0.0: the published min/max are what minimum/maximum give
    vector after vector, whether the vectors came one at a time (held, added 256 at a time) or as a block."""
    lo, hi = np.array([np.inf]), np.array([-np.inf])
    for z in zeros:
        np.minimum(lo, np.array([z]), out=lo)
        np.maximum(hi, np.array([z]), out=hi)
    one, block = Summariser(["a"], interval_s=1e9), Summariser(["a"], interval_s=1e9)
    for k, z in enumerate(zeros):
        one.add_vector(Vector(float(k), np.array([z])))
    block.add_rows(np.arange(len(zeros), dtype=float), np.array(zeros).reshape(-1, 1))
    for s in (one, block):
        ch = s.take(None, {})["channels"]["a"]
        assert np.signbit(ch["min"]) == np.signbit(lo[0]) and np.signbit(ch["max"]) == np.signbit(hi[0]), zeros


def test_the_clear_of_a_held_back_alert_does_not_start_a_cooldown():
    """A fault of 100 s every 500 s with a 600 s cooldown: the second one is held back (it raises 400 s after the
    first cleared), but its clear is never sent, so it must not restart the cooldown — the third is raised (900 s
    after the last clear sent). It used to restart it, and every later one was held back for ever."""
    from agent.model_spec import DecisionSpec

    d = Decisions(Counters(), AlertPolicy(cooldown_s=600))
    d.refresh(DecisionSpec(k=1, n=1, clear_ratio=0.8), 1.0, None)
    sent = []
    for start in range(0, 3000, 500):
        for t, score in ((start, 2.0), (start + 100, 0.1)):
            tr, _ = d.judge(Inference(Window("s", t, t, np.zeros((1, 1))), score))
            if tr is not None:
                sent.append((t, tr.state))
    assert sent == [(0, RAISED), (100, CLEARED), (1000, RAISED), (1100, CLEARED), (2000, RAISED), (2100, CLEARED)]
    assert d.counters.get("alerts.suppressed") == 3


def test_unfit_names_the_k_and_n_a_new_model_would_not_run_with():
    from agent.model_spec import DecisionSpec

    assert Decisions(Counters()).unfit(DecisionSpec(k=3, n=5)) is None
    assert Decisions(Counters(), k=4).unfit(DecisionSpec(k=2, n=5)) is None
    assert Decisions(Counters(), k=4).unfit(DecisionSpec(k=2, n=3)) == \
        "decision k=4 (EDGE_AGENT_DECISION__K) exceeds n=3 (its sidecar decision.n)"
    assert Decisions(Counters(), n=2).unfit(DecisionSpec(k=3, n=5)) == \
        "decision k=3 (its sidecar decision.k) exceeds n=2 (EDGE_AGENT_DECISION__N)"


def _fault(d: Decisions, spans: list[tuple[float, float, float]], step: float = 50.0) -> list[tuple[float, str]]:
    """Windows every ``step`` s with the score of the span (start, end, score) they fall in; the transitions sent."""
    sent = []
    for start, end, score in spans:
        t = start
        while t < end:
            tr, _ = d.judge(Inference(Window("s", t, t, np.zeros((1, 1))), score))
            if tr is not None:
                sent.append((t, tr.state))
            t += step
    return sent


def test_an_alert_held_back_by_the_cooldown_is_raised_when_it_ends_if_the_fault_is_still_on():
    """The fault comes back 100 s after a clear and stays on: held back by the 600 s cooldown, it is raised once
    at the first window when the cooldown is over (it used to be counted and never sent), and its clear is sent
    and starts a cooldown as any."""
    from agent.model_spec import DecisionSpec

    d = Decisions(Counters(), AlertPolicy(cooldown_s=600))
    d.refresh(DecisionSpec(k=1, n=1, clear_ratio=0.8), 1.0, None)
    sent = _fault(d, [(0, 100, 2.0), (100, 200, 0.1), (200, 1500, 2.0), (1500, 1600, 0.1), (1600, 1800, 2.0)])
    assert sent == [(0, RAISED), (100, CLEARED), (700, RAISED), (1500, CLEARED)]  # 1600: the new cooldown
    assert d.counters.get("alerts.suppressed") == 2 and d.counters.get("alerts.delayed") == 1
    assert d.counters.get("alerts.raised") == 2 and d.counters.get("alerts.cleared") == 2
    assert d.held_until("s") is not None  # the last one: still held back while its fault is on


def test_an_alert_held_back_by_the_rate_limit_is_raised_when_the_hour_has_room():
    from agent.model_spec import DecisionSpec

    d = Decisions(Counters(), AlertPolicy(rate_limit_per_hour=1))
    d.refresh(DecisionSpec(k=1, n=1, clear_ratio=0.8), 1.0, None)
    sent = _fault(d, [(0, 100, 2.0), (100, 200, 0.1), (200, 4000, 2.0), (4000, 4100, 0.1)])
    assert sent == [(0, RAISED), (100, CLEARED), (3600, RAISED), (4000, CLEARED)]
    assert d.counters.get("alerts.delayed") == 1 and d.held_until("s") is None


def test_new_decision_parameters_give_running_machines_the_new_refractory():
    """After a receded clear a new raise needs 30 % over the score it cleared at, a floor that decays with the
    refractory. A model swap whose sidecar shortens the refractory from 1800 to 1 window must shorten it for the
    machines already running, as for those made after the swap (they used to keep the old one: no raise here)."""
    from agent.model_spec import DecisionSpec

    d = Decisions(Counters())
    d.refresh(DecisionSpec(k=1, n=1, clear_ratio=0.5, recede_ratio=0.5, refractory=1800), 1.0, None)
    assert [t and t.state for t, _ in (d.judge(_inf(10.0, 0)), d.judge(_inf(4.0, 1)))] == [RAISED, CLEARED]
    d.refresh(DecisionSpec(k=1, n=1, clear_ratio=0.5, recede_ratio=0.5, refractory=1), 1.0, None, forget=True)
    states = [d.judge(_inf(2.0, 2 + i))[0] for i in range(10)]  # over the threshold, under the floor of 5.2
    assert [t.state for t in states if t is not None] == [RAISED]
    assert d.machines["s"]._decay == d.machine("new")._decay


def test_a_summariser_for_other_channels_goes_on_with_the_period():
    s = Summariser(["a", "b"], 60.0)
    for i in range(4):
        s.add_vector(Vector(100.0 + i, np.array([1.0 + i, 10.0 + i])))
    s.add_scores(np.array([0.5, 2.0]))
    s.raised = 1
    t = s.with_channels(["b", "c"])
    t.add_vector(Vector(104.0, np.array([20.0, 5.0])))
    assert not t.due(159.0) and t.due(160.0)  # the period that began at 100 goes on
    out = t.take(110.0, {})
    assert out["period_start"] == 100.0 and out["readings"] == 5 and out["windows"] == 2 and out["alerts_raised"] == 1
    assert out["channels"] == {"b": {"count": 5, "min": 10.0, "mean": 13.2, "max": 20.0},
                               "c": {"count": 1, "min": 5.0, "mean": 5.0, "max": 5.0}}
    assert out["score"] is None  # the scores count from the swap: the old model's are not the new one's
    t.add_vector(Vector(111.0, np.array([1.0, 2.0])))
    assert t.take(120.0, {})["channels"]["c"]["count"] == 1  # a new period: every channel from its start
