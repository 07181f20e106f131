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
