"""Windowing and normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from agent.records import Vector
from agent.window import Normaliser, Windower, feature_size, features


def _push_all(w, n, sensor="s"):
    out = []
    for i in range(n):
        win = w.push(Vector(ts=float(i), values=np.array([i, 10 * i], dtype=float), sensor=sensor))
        if win is not None:
            out.append(win)
    return out


@pytest.mark.parametrize(
    "length, hop, n, expected_ends",
    [(3, 1, 5, [2, 3, 4]), (3, 2, 7, [2, 4, 6]), (1, 1, 3, [0, 1, 2]), (4, 4, 9, [3, 7]), (5, 1, 4, [])],
)
def test_window_length_and_hop(length, hop, n, expected_ends):
    wins = _push_all(Windower(length, hop, 2), n)
    assert [w.end_ts for w in wins] == expected_ends
    for w in wins:
        assert w.data.shape == (length, 2)
        assert list(w.data[:, 0]) == list(range(int(w.end_ts) - length + 1, int(w.end_ts) + 1))  # oldest first
        assert w.start_ts == w.end_ts - length + 1


def test_sensors_have_their_own_buffers_and_reset():
    w = Windower(2, 1, 2)
    assert w.push(Vector(0.0, np.zeros(2), "a")) is None
    assert w.push(Vector(0.0, np.zeros(2), "b")) is None
    assert w.push(Vector(1.0, np.ones(2), "a")) is not None
    w.reset("b")
    assert w.push(Vector(1.0, np.ones(2), "b")) is None


def test_window_data_is_a_copy():
    w = Windower(2, 1, 2)
    wins = _push_all(w, 4)
    assert wins[0].data[0, 0] == 0 and wins[1].data[0, 0] == 1


def test_normaliser_zscore_and_constant_channel():
    data = np.array([[1.0, 5.0], [3.0, 5.0]])
    n = Normaliser.fit(data)
    z = n(data)
    assert np.allclose(z[:, 0], [-1, 1])
    assert np.all(np.isfinite(z[:, 1])) and np.allclose(z[:, 1], 0)


def test_features():
    win = np.arange(6, dtype=float).reshape(3, 2)
    assert list(features("raw", win)) == [0, 1, 2, 3, 4, 5]
    assert list(features("last", win)) == [4, 5]
    assert feature_size("raw", 3, 2) == 6 and feature_size("last", 3, 2) == 2
    with pytest.raises(ValueError):
        features("fft", win)


def test_normaliser_gives_the_numbers_of_broadcasting_for_every_shape():
    """Small windows are normalised against tiles kept per shape; every shape gives (x - mean) / std exactly."""
    rng = np.random.default_rng(5)
    n = Normaliser(rng.normal(size=4) * 100, np.abs(rng.normal(size=4)) + 1e-9)
    for shape in [(4,), (1, 4), (10, 4), (3, 4), (7, 4), (2, 10, 4), (2000, 4)]:  # more shapes than tiles kept
        for _ in range(2):
            x = rng.normal(size=shape) * 1e3
            assert np.array_equal(n(x), (x - n.mean) / n.std)
    x = [[1.0, 2.0, 3.0, 4.0]]  # a list, not an array
    assert np.array_equal(n(x), (np.asarray(x) - n.mean) / n.std)


def test_normaliser_of_other_shapes_is_still_plain_broadcasting():
    """A scalar, a row of another width and a block of windows are not tiled: the broadcast result (or its error)."""
    n = Normaliser(np.array([1.0, 2.0]), np.array([2.0, 4.0]))
    assert np.array_equal(n(np.float64(3.0)), (3.0 - n.mean) / n.std)
    block = np.arange(24.0).reshape(3, 4, 2)
    assert np.array_equal(n(block), (block - n.mean) / n.std)
    with pytest.raises(ValueError):
        n(np.zeros((4, 3)))  # three channels against two: refused as before
    assert not n._tiles  # noqa: SLF001 - none of these was kept


@pytest.mark.parametrize("length, hop", [(1, 1), (3, 1), (4, 2)])
def test_push_and_push_rows_in_turns_give_the_windows_of_push_alone(length, hop):
    rng = np.random.default_rng(length)
    rows, stamps = rng.normal(size=(40, 3)), np.arange(40) * 1.5 + 7  # float stamps, some given as ints below
    ref = []
    w = Windower(length, hop, 3)
    for i in range(40):
        win = w.push(Vector(ts=int(stamps[i]) if i % 2 == 0 and stamps[i] == int(stamps[i]) else float(stamps[i]),
                            values=rows[i].copy()))
        if win is not None:
            ref.append((win.start_ts, win.end_ts, win.data.copy()))
    got = []
    w = Windower(length, hop, 3)
    i = 0
    for step in (1, 5, 1, 1, 9, 2, 1, 20):  # one reading, a block, one reading, ...
        if step == 1:
            win = w.push(Vector(ts=float(stamps[i]), values=rows[i].copy()))
            if win is not None:
                got.append((win.start_ts, win.end_ts, win.data.copy()))
        else:
            idx, wins, starts, ends = w.push_rows("", stamps[i:i + step], rows[i:i + step])
            got.extend((float(s), float(e), d.copy()) for s, e, d in zip(starts, ends, wins))
        i += step
    assert len(got) == len(ref)
    for (s0, e0, d0), (s1, e1, d1) in zip(ref, got):
        assert type(s0) is float and type(e0) is float  # a timestamp given as an int is a float in the window
        assert (s0, e0) == (s1, e1) and np.array_equal(d0, d1)
