"""Health helpers: heartbeats, latency percentiles, clock synchronisation, process usage."""

from __future__ import annotations

import math
import time

from agent import health


def test_heartbeats_report_stalled_stages():
    hb = health.Heartbeats()
    hb.beat("pipeline")
    hb.beat("uplink")
    assert hb.stalled(10) == {}
    time.sleep(0.05)
    hb.beat("uplink")
    assert set(hb.stalled(0.03)) == {"pipeline"}


def test_latency_percentiles():
    ring = health.LatencyRing(size=100)
    assert ring.percentiles_ms() is None
    for i in range(1, 201):  # the ring keeps the last 100: 101..200 ms
        ring.add(i / 1000)
    p = ring.percentiles_ms()
    assert p["p50"] == 150.5 and 199 <= p["p99"] <= 200


def test_timesyncd_flag_means_synchronised(tmp_path, monkeypatch):
    flag = tmp_path / "synchronized"
    flag.touch()
    monkeypatch.setattr(health, "TIMESYNC_FLAG", str(flag))
    assert health.clock_synchronised() is True


def test_adjtimex_answers_a_boolean(tmp_path, monkeypatch):
    monkeypatch.setattr(health, "TIMESYNC_FLAG", str(tmp_path / "absent"))
    assert health.clock_synchronised() in (True, False, None)


def test_process_usage():
    u = health.process_usage()
    assert u["rss_bytes"] > 10_000_000 and u["cpu_s"] >= 0 and u["threads"] >= 1


def _monitor(key, published, publish, stop):
    return health.HealthMonitor(health.Heartbeats(), stall_s=60, stats_interval_s=3600, stats=lambda: {},
                                publish_stats=lambda payload: None, status_key=key, publish_status=publish, stop=stop,
                                published_key=published)


def test_a_status_change_before_the_monitor_started_is_still_published():
    """Seen in CI: the birth status said source "connecting", the serial source connected a few ms later, before the
    health thread took its first look; it saw no change after that and the retained status said "connecting" for
    good. The monitor compares with what was published, not with what it saw first."""
    import threading

    current = {"key": ("online", "connected")}
    published = {"key": ("online", "connecting")}  # the birth message, built a moment before the source connected
    calls: list[float] = []

    def publish() -> None:
        calls.append(time.monotonic())
        published["key"] = current["key"]

    stop = threading.Event()
    t = threading.Thread(target=_monitor(lambda: current["key"], lambda: published["key"], publish, stop).run)
    t.start()
    try:
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(calls) == 1, "the status that differs from the published one was not published"
        time.sleep(1.2)
        assert len(calls) == 1, "a status equal to the published one was published again"
        current["key"] = ("degraded", "disconnected")
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(calls) == 2 and published["key"] == ("degraded", "disconnected")
    finally:
        stop.set()
        t.join(5)


def test_latency_percentiles_are_numpys_bit_for_bit():
    """The percentiles are a sort and two picks, not ``np.quantile``: the same numbers (its linear method), for any
    count up to the ring's size, with ties, and for a merge of several rings."""
    import numpy as np

    from agent import status

    rng = np.random.default_rng(7)
    for n in list(range(1, 40)) + [99, 100, 101, 512, 1000, 1023, 1024]:
        for draw in (rng.lognormal(-7, 1, n), np.round(rng.uniform(0, 0.003, n), 5)):  # the second with ties
            ring = health.LatencyRing(size=1024)
            for x in draw.tolist():
                ring.add(x)
            data = np.array(draw) * 1000
            want = {"p50": round(float(np.quantile(data, 0.5)), 4), "p99": round(float(np.quantile(data, 0.99)), 4)}
            assert ring.percentiles_ms() == want, n
            exact = sorted(draw.tolist())
            for q in (0.5, 0.99):
                assert health.quantile_ms(exact, q) == float(np.quantile(data, q)), (n, q)
    a, b = health.LatencyRing(), health.LatencyRing()
    for x in rng.lognormal(-7, 1, 300).tolist():
        a.add(x)
    for x in rng.lognormal(-6, 1, 50).tolist():
        b.add(x)
    both = np.concatenate([np.array(a.kept()), np.array(b.kept())]) * 1000
    assert status._merged_ms([a, b]) == {"p50": round(float(np.quantile(both, 0.5)), 4),
                                         "p99": round(float(np.quantile(both, 0.99)), 4)}
    assert status._merged_ms([health.LatencyRing()]) is None
    for edge in ([math.inf], [0.001, math.inf], [5e-324], [0.0, 0.0], [1e306]):  # one sample, overflow after x1000
        for q in (0.5, 0.99):
            with np.errstate(all="ignore"):  # inf - inf inside numpy's interpolation: NaN, as ours gives
                want = float(np.quantile(np.array(edge) * 1000, q))
            assert repr(health.quantile_ms(edge, q)) == repr(want), (edge, q)
