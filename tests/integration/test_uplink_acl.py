"""A broker whose ACL does not let the gateway read its command topic refuses the subscription in the SUBACK: no
command will ever arrive. The agent says so once, naming the topic, counts it in the stats, and goes on publishing
its alerts and status (what the ACL does allow)."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest

from tests.conftest import Broker, Recorder, agent_env, start_agent, wait_for

# Debian's mosquitto package ships it (/usr/lib/<arch>/)
DYNSEC = next(iter(sorted(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so"))), "mosquitto_dynamic_security.so")


def test_a_refused_command_subscription_is_named_once_and_counted(tmp_path: Path, agents) -> None:
    if not Path(DYNSEC).exists():
        pytest.fail(f"{DYNSEC} not found: install Debian's mosquitto (`sudo apt-get install -y mosquitto`)")
    # mosquitto's acl_file grants every subscription and filters at delivery (nothing to see, by the protocol);
    # its dynamic-security plugin refuses in the SUBACK, as EMQX, HiveMQ and others do
    dynsec = tmp_path / "dynsec.json"
    dynsec.write_text(json.dumps({
        "defaultACLAccess": {"publishClientSend": True, "publishClientReceive": True, "subscribe": False,
                             "unsubscribe": True},
        "clients": [], "anonymousGroup": "anon", "groups": [{"groupname": "anon", "roles": [{"rolename": "watch"}]}],
        "roles": [{"rolename": "watch", "acls": [{"acltype": "subscribePattern", "topic": "edge/test-gw/stats",
                                                  "priority": 0, "allow": True}]}]}))
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker", extra_conf=f"user root\nplugin {DYNSEC}\nplugin_opt_config_file {dynsec}\n")
    broker.start()
    try:
        rec = Recorder(broker.port, "edge/test-gw/stats")
        env = agent_env(tmp_path / "state", broker.port, EDGE_AGENT_SOURCE__SPEED="1", EDGE_AGENT_STATS_INTERVAL_S="1",
                        EDGE_AGENT_MQTT__KEEPALIVE_S="5")
        a = start_agent(env, tmp_path / "logs")
        agents.append(a)
        wait_for(lambda: "refused the subscription to edge/test-gw/cmd/+" in a.log, timeout=60,
                 what="the refused subscription named")
        stats = wait_for(lambda: next((s for s in reversed(rec.on("stats"))
                                       if s["uplink"]["subscribe_refused"] >= 1), None), timeout=20, what="stats")
        assert stats["uplink"]["connects"] >= 1
        broker.stop()  # a reconnect subscribes again, and is refused again: still one line
        broker.start()
        wait_for(lambda: a.log.count("connected to") >= 2, timeout=60, what="the reconnect")
        wait_for(lambda: any(s["uplink"]["subscribe_refused"] >= 2 for s in rec.on("stats")), timeout=30,
                 what="the second refusal counted")
        assert a.log.count("refused the subscription") == 1, a.log
        assert a.alive()
        rec.close()
    finally:
        broker.stop()
