"""``[[assets]]``: validation of the list and of each merged asset, what an asset inherits, one model object per
file, each asset's state directory and topics; and a configuration without assets unchanged (status, topics)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from agent.app import Agent
from agent.asset_settings import effective_settings
from agent.records import Reading
from agent.settings import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
BASE_ENV = {"EDGE_AGENT_DEVICE_ID": "gw", "EDGE_AGENT_CLOCK_SYNC_REQUIRED": "false"}


def _load(tmp_path: Path, text: str, **env: str) -> Settings:
    f = tmp_path / "gateway.toml"
    f.write_text(text)
    return load_settings(environ={"EDGE_AGENT_CONFIG_FILE": str(f), "EDGE_AGENT_STATE_DIR": str(tmp_path / "state"),
                                  **BASE_ENV, **env})


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text)
    return e.value.problems


def test_an_asset_overrides_only_what_it_sets(tmp_path: Path) -> None:
    s = _load(tmp_path, """
summary_interval_s = 120
[decision]
n = 8
recede_ratio = 0.3
[alerts]
cooldown_s = 45

[[assets]]
id = "a"
source = { kind = "replay" }
decision = { k = 5 }

[[assets]]
id = "b"
source = { kind = "replay", speed = 10 }
summary_interval_s = 30
alerts = { rate_limit_per_hour = 3 }
""")
    a, b = (effective_settings(s, x) for x in s.assets)
    assert (a.decision.k, a.decision.n, a.decision.recede_ratio) == (5, 8, 0.3)  # k its own, n and recede inherited
    assert a.summary_interval_s == 120 and a.alerts.cooldown_s == 45
    assert b.decision.k is None and b.summary_interval_s == 30
    assert (b.alerts.cooldown_s, b.alerts.rate_limit_per_hour) == (45, 3)
    assert b.source.speed == 10 and s.source.kind == "replay" and s.source.speed == 0  # the gateway's untouched


@pytest.mark.parametrize("text, expected", [
    ('[[assets]]\nid = "a"\nsource = {kind = "replay"}\n[[assets]]\nid = "a"\nsource = {kind = "replay"}\n',
     "assets[1].id = 'a': also the id of assets[0]"),
    ('[[assets]]\nid = "a/b"\nsource = {kind = "replay"}\n', "assets.0.id"),
    ('[[assets]]\nid = "a"\n', "assets.0.source"),
    ('[[assets]]\nid = "a"\nsource = {kind = "replay"}\ncolour = "red"\n', "assets.0.colour"),
    ('[decision]\nn = 4\n[[assets]]\nid = "a"\nsource = {kind = "replay"}\ndecision = {k = 6}\n',
     "assets[0] (a).decision"),
    ('[[assets]]\nid = "a"\nsource = {kind = "serial", port = "/dev/ttyUSB0"}\n'
     '[[assets]]\nid = "b"\nsource = {kind = "serial", port = "/dev/ttyUSB0"}\n', "one owner per serial port"),
    ('[[assets]]\nid = "a"\nsource = {kind = "modbus", devices = ["nope"]}\n',
     "assets[0] (a).source.kind=modbus: no [modbus.devices.NAME]"),
])
def test_bad_asset_lists_are_refused_naming_the_key(tmp_path: Path, text: str, expected: str) -> None:
    problems = _problems(tmp_path, text)
    assert any(expected in p for p in problems), problems


def test_a_problem_in_a_later_asset_names_that_assets_own_line(tmp_path: Path) -> None:
    """An error in the second or fourth ``[[assets]]`` entry points at its line, not at the first entry's."""
    f = tmp_path / "gateway.toml"
    problems = _problems(tmp_path, """[[assets]]
id = "a"
source = {kind = "replay"}

[[assets]]
id = "b"
source = {kind = "replay"}
decision = {k = 0}

[[assets]]
id = "c"
source = {kind = "replay"}
[assets.cleaning]
max_hold_s = -1
[[assets]]
id = "d"
source = {kind = "replay", speed = -1}
""")
    assert any(p.startswith(f"assets.1.decision.k = 0 ({f} line 8):") for p in problems), problems
    assert any(p.startswith(f"assets.2.cleaning.max_hold_s = -1 ({f} line 14):") for p in problems), problems
    assert f"assets.3.source.speed = -1 ({f} line 17): Input should be greater than or equal to 0" in problems, problems


def test_an_asset_source_problem_names_the_key_as_written_without_the_union_tag(tmp_path: Path) -> None:
    """pydantic puts the source kind (its union tag) into the path, assets.0.source.mqtt.qos: the file has no such
    key; the problem names assets.0.source.qos, and a key in an [assets.source] table gets its own line."""
    f = tmp_path / "gateway.toml"
    problems = _problems(tmp_path, """[[assets]]
id = "a"
source = {kind = "mqtt", topics = ["x/#"], qos = 7}

[[assets]]
id = "b"
[assets.source]
kind = "replay"
speedd = 2
""")
    assert problems == [f"assets.0.source.qos = 7 ({f} line 3): Input should be less than or equal to 1",
                        f"assets.1.source.speedd = 2 ({f} line 9): Extra inputs are not permitted"], problems


def test_a_modbus_device_has_one_asset(tmp_path: Path) -> None:
    problems = _problems(tmp_path, """
[modbus.buses.line]
kind = "tcp"
host = "127.0.0.1"
[modbus.devices.m1]
bus = "line"
unit = 1
channels = { v = { address = 0 } }
[[assets]]
id = "a"
source = { kind = "modbus", devices = ["m1"] }
[[assets]]
id = "b"
source = { kind = "modbus", devices = ["m1"] }
""")
    assert any("'m1' is already read by asset 'a'" in p for p in problems), problems
    problems = _problems(tmp_path, """
[modbus.buses.line]
kind = "tcp"
host = "127.0.0.1"
[modbus.devices.m1]
bus = "line"
unit = 1
channels = { v = { address = 0 } }
[[assets]]
id = "a"
source = { kind = "modbus", devices = ["m2"] }
""")
    assert any(p.startswith("assets[0] (a).source.devices='m2': m2 not declared") for p in problems), problems


def test_mqtt_assets_on_one_broker_must_agree_on_the_connections_settings(tmp_path: Path) -> None:
    """They share one client (agent.assets.build_feeds): a differing gather_ms or TLS file is refused at load,
    naming both values; each asset's own qos and max_payload_bytes may differ, and so may another broker's assets."""
    problems = _problems(tmp_path, """
[[assets]]
id = "a"
source = { kind = "mqtt", topics = ["a/#"], broker_host = "sensors", broker_tls = true }
[[assets]]
id = "b"
[assets.source]
kind = "mqtt"
topics = ["b/#"]
broker_host = "sensors"
broker_tls = true
gather_ms = 0
broker_tls_insecure = true
""")
    assert problems == [
        "assets[1].source.gather_ms = 0: asset 'a' on the same sensor broker has 40 (the mqtt assets on one broker "
        "share one client: their gather_ms, broker_ca_file, broker_cert_file, broker_key_file, broker_tls_insecure "
        "must be the same)",
        "assets[1].source.broker_tls_insecure = True: asset 'a' on the same sensor broker has False (the mqtt assets "
        "on one broker share one client: their gather_ms, broker_ca_file, broker_cert_file, broker_key_file, "
        "broker_tls_insecure must be the same)",
    ], problems
    s = _load(tmp_path, """
[[assets]]
id = "a"
source = { kind = "mqtt", topics = ["a/#"] }
[[assets]]
id = "b"
source = { kind = "mqtt", topics = ["b/#"], qos = 1, max_payload_bytes = 4194304 }
[[assets]]
id = "c"
source = { kind = "mqtt", topics = ["c/#"], broker_port = 1884, gather_ms = 0 }
""")
    assert [a.id for a in s.assets] == ["a", "b", "c"]


def test_check_config_exits_78_on_a_bad_asset_and_accepts_the_example(tmp_path: Path) -> None:
    f = tmp_path / "gateway.toml"
    f.write_text('[[assets]]\nid = "a"\nsource = {kind = "replay"}\ndecision = {k = 0}\n')
    env = {"PATH": "/usr/bin:/bin", "EDGE_AGENT_CONFIG_FILE": str(f), "EDGE_AGENT_STATE_DIR": str(tmp_path / "s")}
    r = subprocess.run([sys.executable, "-m", "agent", "check-config"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 78 and "decision.k" in r.stderr, r.stderr
    env["EDGE_AGENT_CONFIG_FILE"] = str(ROOT / "deploy" / "gateway.toml.example")
    r = subprocess.run([sys.executable, "-m", "agent", "check-config"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert '[[assets]]\nid = "pump-1"' in r.stdout and 'id = "test-bench"' in r.stdout


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Agent]:
    s = _load(tmp_path, """
[model]
path = "pump-anomaly"
[[assets]]
id = "a"
source = { kind = "replay" }
[[assets]]
id = "b"
source = { kind = "replay" }
calibration = { samples = 0 }
[[assets]]
id = "c"
source = { kind = "replay" }
model = { path = "generic" }
""")
    agent = Agent(s)
    yield agent
    agent.outbox.close()
    agent.evidence.close()


def test_each_asset_has_its_pipeline_state_and_topics_and_models_load_once(gateway: Agent, tmp_path: Path) -> None:
    a, b, c = gateway.assets
    assert a.pipeline.model is b.pipeline.model  # one file, one interpreter
    assert c.pipeline.model is not a.pipeline.model and c.pipeline.model.name == "generic"
    assert a.state_dir == tmp_path / "state" / "assets" / "a" and a.state_dir.is_dir()
    assert a.pipeline.calibrator.enabled and not b.pipeline.calibrator.enabled
    channels = list(a.pipeline.model.sidecar.channels)
    events = []
    for i in range(40):  # b is not teaching in: a strong step raises an alert on b alone
        events += b.pipeline.process(Reading(1000.0 + i, {ch: (50.0 if i > 15 else 0.0) for ch in channels}, "s", "b"))
    msgs = b.messages.outgoing(events)
    assert msgs and all(m.topic_suffix.startswith("asset/b/") and m.payload["asset"] == "b" for m in msgs)
    assert a.counters.get("pipeline.windows") == 0 and b.counters.get("pipeline.windows") > 0
    assert gateway.counters.get("pipeline.windows") == b.counters.get("pipeline.windows")  # counted into the gateway's
    st = gateway.status()
    assert set(st["assets"]) == {"a", "b", "c"} and st["assets"]["a"]["state"] == "calibrating"
    assert "model" not in st and "threshold" not in st  # per asset only


def test_without_assets_status_and_topics_are_those_of_before(tmp_path: Path) -> None:
    s = load_settings(environ={"EDGE_AGENT_STATE_DIR": str(tmp_path / "state"), "EDGE_AGENT_MODEL__PATH": "pump-anomaly",
                               "EDGE_AGENT_CALIBRATION__SAMPLES": "0", **BASE_ENV})
    agent = Agent(s)
    try:
        st = agent.status()
        assert set(st) == {"state", "ts", "device_id", "agent_version", "started_at", "open_alerts", "model", "source",
                           "threshold", "overrides", "config_digest"}
        assert st["open_alerts"] == []  # none carried over: a consumer closes what an earlier run left open
        assert set(agent.stats()) >= {"readings_in", "windows", "threshold", "source", "sensors"}
        assert "assets" not in agent.stats()
        assert agent.assets[0].state_dir == tmp_path / "state" and not (tmp_path / "state" / "assets").exists()
        channels = list(agent.pipeline.model.sidecar.channels)
        events = []
        for i in range(40):
            events += agent.pipeline.process(Reading(1000.0 + i, {ch: (50.0 if i > 15 else 0.0) for ch in channels}, "s"))
        msgs = agent.assets[0].messages.outgoing(events)
        assert {m.topic_suffix for m in msgs} <= {"alerts", "summary", "advice"} and msgs
        assert all("asset" not in m.payload for m in msgs)
    finally:
        agent.outbox.close()
        agent.evidence.close()


def test_reload_model_for_one_asset_swaps_only_its_model(tmp_path: Path) -> None:
    import json
    import shutil

    from agent.bundled import bundled_model

    models = tmp_path / "models"
    models.mkdir()
    src = bundled_model("pump-anomaly")
    shutil.copy(src, models / src.name)
    sc = json.loads(src.with_suffix(".json").read_text())
    sc["version"] = "9.0.0"
    (models / src.with_suffix(".json").name).write_text(json.dumps(sc))
    s = _load(tmp_path, """
[model]
path = "pump-anomaly"
[calibration]
samples = 0
[[assets]]
id = "a"
source = { kind = "replay" }
[[assets]]
id = "b"
source = { kind = "replay" }
""", EDGE_AGENT_COMMANDS__MODEL_DIRS=str(models))
    agent = Agent(s)
    try:
        a, b = agent.assets
        assert a.pipeline.model is b.pipeline.model
        body = {"request_id": "m", "asset": "b", "path": str(models / src.name), "sha256": sc["sha256"]}
        r = agent.commands.handle("reload-model", json.dumps(body).encode())
        assert r["ok"] and r["asset"] == "b" and r["model"]["version"] == "9.0.0", r
        assert b.pipeline.model.version == "9.0.0" and a.pipeline.model.version != "9.0.0"
        st = agent.status()["assets"]
        assert st["b"]["overrides"]["model"]["version"] == "9.0.0" and st["a"]["overrides"] == {}
        r = agent.commands.handle("reload-model", json.dumps({**body, "asset": None}).encode())
        assert not r["ok"] and "asset is required" in r["reason"], r
    finally:
        agent.outbox.close()
        agent.evidence.close()


def test_calibrate_reset_beside_a_running_agent_names_the_command_with_its_asset(tmp_path: Path) -> None:
    """Refused with exit 75, it suggested cmd/calibrate without the asset, which a gateway of several refuses."""
    from agent.files import hold_state_dir, release_state_dir

    f = tmp_path / "gateway.toml"
    f.write_text('[[assets]]\nid = "a"\nsource = {kind = "replay"}\n[[assets]]\nid = "b"\nsource = {kind = "replay"}\n')
    state = tmp_path / "s"
    state.mkdir()
    held = hold_state_dir(state)  # the running agent
    try:
        env = {"PATH": "/usr/bin:/bin", "EDGE_AGENT_CONFIG_FILE": str(f), "EDGE_AGENT_STATE_DIR": str(state),
               **BASE_ENV}
        r = subprocess.run([sys.executable, "-m", "agent", "calibrate", "--reset", "--asset", "b"], env=env, cwd=ROOT,
                           capture_output=True, text=True)
    finally:
        release_state_dir(held)
    assert r.returncode == 75, r.stderr
    assert 'edge/gw/cmd/calibrate with {"asset": "b"}' in r.stderr, r.stderr
