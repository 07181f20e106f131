"""Health helpers: heartbeats, latency percentiles, clock synchronisation, process usage."""

from __future__ import annotations

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
