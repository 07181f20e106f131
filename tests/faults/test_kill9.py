"""The agent killed with SIGKILL at 20 random moments across a replay, restarted on the same state dir each time:
every alert that was written to the outbox reaches the broker, and the outbox passes ``PRAGMA integrity_check``
after every kill.

"Written to the outbox" is known exactly: an alert gets its per-device ``seq`` inside the transaction that stores
it (the counter lives in the same database), so the alerts ever committed are exactly seq 1..alert_seq. Every one
of them must reach the broker, whether it was published before a kill, was in flight at a kill, or was still
stored at a kill and sent by a later run. The outbox is also read after each kill (read-only, WAL included) and
every alert seen there is checked by id.
"""

from __future__ import annotations

import random
import signal
import time

from tests.conftest import run_agent, start_agent, wait_for
from tests.faults.conftest import agent_env, BASE, outbox_snapshot

KILLS = 20
SPEED = 300  # the 1145-row demo in ~4 s: teach-in (400 rows), then three alerts raised and cleared
SEED = 20240917


def test_sigkill_at_random_moments_loses_no_alert(tmp_path, live_broker, recorder, agents):
    rec = recorder(f"{BASE}/#")
    state = tmp_path / "state"
    env = agent_env(state, live_broker.port, EDGE_AGENT_SOURCE__SPEED=SPEED, EDGE_AGENT_DRAIN_TIMEOUT_S="2")
    rng = random.Random(SEED)
    in_outbox: dict[str, dict] = {}  # alert id -> payload, for every alert seen in an outbox snapshot
    killed = 0
    logs = []
    for i in range(KILLS):
        a = start_agent(env, tmp_path / "logs")
        agents.append(a)
        # a whole run takes ~5.5 s: kill anywhere in start-up, teach-in, scoring, alerts, the final drain
        time.sleep(rng.uniform(0.2, 5.0))
        if a.alive():
            a.proc.send_signal(signal.SIGKILL)
            killed += 1
        a.proc.wait(30)
        logs.append(a.log)
        if not (state / "outbox.db").exists():
            continue  # killed before the outbox was created
        check, rows, _ = outbox_snapshot(state)
        assert check == "ok", f"after kill {i + 1}: integrity_check says {check}"
        for kind, payload in rows:
            if kind == "alert":
                in_outbox[payload["id"]] = payload
    assert killed >= KILLS * 3 // 4, f"only {killed} of {KILLS} runs were still running when the kill came"

    # one more run, to completion: it sends whatever the killed runs left behind
    r = run_agent(env)
    assert r.returncode == 0, r.stderr
    logs.append(r.stderr)
    check, rows, last_seq = outbox_snapshot(state)
    assert check == "ok"
    assert rows == [], f"{len(rows)} rows still in the outbox after a clean run"
    assert last_seq > 0, "no alert was ever written: the replay did not get to the fault"

    def alerts_by_seq() -> dict[int, dict]:
        return {a["seq"]: a for a in rec.on("alerts")}

    wait_for(lambda: set(alerts_by_seq()) >= set(range(1, last_seq + 1)), timeout=30,
             what=f"alerts seq 1..{last_seq} at the broker")
    got = rec.on("alerts")
    by_seq = alerts_by_seq()
    missing = sorted(set(range(1, last_seq + 1)) - set(by_seq))
    assert not missing, f"alerts written to the outbox but never delivered: seq {missing}"
    # a seq is one alert: duplicates (at-least-once) carry the same id
    ids_per_seq: dict[int, set[str]] = {}
    for a in got:
        ids_per_seq.setdefault(a["seq"], set()).add(a["id"])
    assert all(len(ids) == 1 for ids in ids_per_seq.values()), {s: i for s, i in ids_per_seq.items() if len(i) > 1}
    # every alert seen waiting in an outbox after a kill arrived, unchanged
    got_ids = {a["id"]: a for a in got}
    lost = [p for i, p in in_outbox.items() if i not in got_ids]
    assert not lost, f"alerts seen in the outbox after a kill but never delivered: {lost}"
    for i, p in in_outbox.items():
        assert got_ids[i]["seq"] == p["seq"] and got_ids[i]["window_end"] == p["window_end"]
    # no run ever found the outbox corrupt (nothing moved aside, no recovery)
    assert not list(state.glob("outbox.db.corrupt-*"))
    assert not any("is corrupt" in text for text in logs), next(t for t in logs if "is corrupt" in t)
