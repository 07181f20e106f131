"""Commands against a real Agent (real model, real state files; no broker needed: replies are returned).

Issue 12 items 1-4: a command that changes nothing changes nothing, overrides show in status and stats, the
allow-list, the rate and size limits, log values escaped and cut, reload-model only from allowed directories.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from agent.app import Agent
from agent.bundled import bundled_model
from agent.command_gate import MAX_PAYLOAD_BYTES, CommandGate, TokenBucket
from agent.counters import Counters
from agent.records import Reading
from agent.settings import load_settings


def make_agent(state: Path, **env: str) -> Agent:
    settings = load_settings(None, {
        "EDGE_AGENT_STATE_DIR": str(state), "EDGE_AGENT_DEVICE_ID": "gw", "EDGE_AGENT_CLOCK_SYNC_REQUIRED": "false",
        "EDGE_AGENT_MODEL__PATH": "pump-anomaly",  # the command mechanics on the TFLite model (teach-in may be off)
        **env,
    })
    return Agent(settings)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = make_agent(tmp_path / "state", EDGE_AGENT_CALIBRATION__SAMPLES="0")
    yield a
    a.outbox.close()
    a.evidence.close()


def cmd(agent: Agent, name: str, body: Any = None, raw: bytes | None = None) -> dict[str, Any]:
    return agent.commands.handle(name, raw if raw is not None else json.dumps(body).encode())


# -- item 1 ----------------------------------------------------------------------------------------------------


def test_set_threshold_null_when_nothing_is_set_changes_nothing(agent: Agent) -> None:
    snap = agent.pipeline.snapshot
    r = cmd(agent, "set-threshold", {"request_id": "a", "threshold": None})
    assert r["ok"] and r["changed"] is False and r["threshold"] == snap.threshold
    assert not agent.overrides_path.exists(), "nothing changed, yet overrides.json was written"
    assert agent.pipeline.snapshot is snap


def test_threshold_override_is_in_status_and_stats_logged_with_the_old_value(agent: Agent, caplog) -> None:
    caplog.set_level(logging.INFO)
    natural = agent.pipeline.snapshot.threshold
    r = cmd(agent, "set-threshold", {"request_id": "a", "threshold": natural * 10})
    assert r["ok"] and r["changed"] is True
    for payload in (agent.status(), agent.stats()):
        assert payload["threshold"] == pytest.approx(natural * 10)
        assert payload["overrides"] == {"threshold": pytest.approx(natural * 10)}
    assert f"threshold {natural:.6g} -> {natural * 10:.6g}" in caplog.text
    mtime = agent.overrides_path.stat().st_mtime_ns
    r = cmd(agent, "set-threshold", {"request_id": "b", "threshold": natural * 10})
    assert r["ok"] and r["changed"] is False and agent.overrides_path.stat().st_mtime_ns == mtime
    r = cmd(agent, "set-threshold", {"request_id": "c", "threshold": None})
    assert r["changed"] is True and agent.status()["overrides"] == {} and agent.status()["threshold"] == natural


def test_calibrate_while_teach_in_runs_changes_nothing(tmp_path: Path) -> None:
    a = make_agent(tmp_path / "state")
    try:
        channels = a.pipeline.model.sidecar.channels
        from agent.records import Reading

        for i in range(20):
            a.pipeline.process(Reading(float(i), {c: 1.0 + i % 3 for c in channels}))
        assert a.pipeline.snapshot.calibration_collected == 20
        r = cmd(a, "calibrate", {"request_id": "x"})
        assert r["ok"] and r["changed"] is False and r["collected"] == 20
        assert a.pipeline.snapshot.calibration_collected == 20
    finally:
        a.outbox.close()
        a.evidence.close()


def test_reloading_the_running_model_changes_nothing(agent: Agent) -> None:
    machines_before = dict(agent.pipeline.machines)
    snap = agent.pipeline.snapshot
    sha = agent.pipeline.model.sha256
    r = cmd(agent, "reload-model", {"request_id": "m", "path": str(bundled_model("pump-anomaly")), "sha256": sha})
    assert r["ok"] and r["changed"] is False, r
    assert agent.pipeline.snapshot is snap and agent.pipeline.machines == machines_before


def _copy_model(d: Path, version: str) -> tuple[Path, str]:
    d.mkdir(parents=True, exist_ok=True)
    src = bundled_model("pump-anomaly")
    shutil.copy(src, d / src.name)
    sc = json.loads(src.with_suffix(".json").read_text())
    sc["version"] = version
    (d / src.with_suffix(".json").name).write_text(json.dumps(sc))
    return d / src.name, sc["sha256"]


def test_model_override_is_in_status_and_stats(tmp_path: Path) -> None:
    models = tmp_path / "models"
    path, sha = _copy_model(models, "7.0.0")
    a = make_agent(tmp_path / "state", EDGE_AGENT_CALIBRATION__SAMPLES="0", EDGE_AGENT_COMMANDS__MODEL_DIRS=str(models))
    try:
        r = cmd(a, "reload-model", {"request_id": "m", "path": str(path), "sha256": sha})
        assert r["ok"] and r["changed"] is True and r["model"]["version"] == "7.0.0", r
        for payload in (a.status(), a.stats()):
            assert payload["overrides"]["model"]["version"] == "7.0.0"
            assert payload["overrides"]["model"]["path"] == str(path.resolve())
        assert a.status()["model"]["version"] == "7.0.0"
    finally:
        a.outbox.close()
        a.evidence.close()


def test_reload_model_with_another_refractory_retunes_the_running_sensors_too(tmp_path: Path) -> None:
    """A sidecar whose decision.refractory differs: the sensors already running take it on the swap, as new ones
    do (they kept the old one: only machines made after the swap had it)."""
    import math

    models = tmp_path / "models"
    path, sha = _copy_model(models, "8.0.0")
    sc_path = path.with_suffix(".json")
    sc = json.loads(sc_path.read_text())
    assert sc["decision"].get("refractory", 1800) != 7
    sc["decision"] = {**sc["decision"], "refractory": 7}
    sc_path.write_text(json.dumps(sc))
    a = make_agent(tmp_path / "state", EDGE_AGENT_CALIBRATION__SAMPLES="0", EDGE_AGENT_COMMANDS__MODEL_DIRS=str(models))
    try:
        channels = a.pipeline.model.sidecar.channels
        for i in range(20):
            a.pipeline.process(Reading(1000.0 + i, {ch: 1.0 + i % 3 for ch in channels}, "running"))
        assert "running" in a.pipeline.machines
        r = cmd(a, "reload-model", {"request_id": "r", "path": str(path), "sha256": sha})
        assert r["ok"] and r["changed"] is True, r
        assert a.pipeline.params.refractory == 7
        for i in range(20):
            a.pipeline.process(Reading(1020.0 + i, {ch: 1.0 + i % 3 for ch in channels}, "new"))
        for sensor in ("running", "new"):
            assert a.pipeline.machines[sensor]._decay == math.exp(-1 / 7), sensor
    finally:
        a.outbox.close()
        a.evidence.close()


# -- item 2: the allow-list --------------------------------------------------------------------------------------


def test_a_command_switched_off_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    a = make_agent(tmp_path / "state", EDGE_AGENT_CALIBRATION__SAMPLES="0", EDGE_AGENT_COMMANDS__ALLOW="ping,status")
    try:
        assert cmd(a, "ping", {"request_id": "p"})["ok"]
        r = cmd(a, "set-threshold", {"request_id": "t", "threshold": a.pipeline.snapshot.threshold * 2})
        assert r["ok"] is False and "switched off" in r["reason"] and "EDGE_AGENT_COMMANDS__ALLOW" in r["reason"]
        assert a.pipeline.snapshot.overrides == {}
    finally:
        a.outbox.close()
        a.evidence.close()


# -- item 3: rate limit, size limit, log values ------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket() -> None:
    clock = FakeClock()
    b = TokenBucket(1.0, 3, clock)
    assert [b.take() for _ in range(4)] == [True, True, True, False]
    clock.t += 1.0
    assert b.take() and not b.take()
    clock.t += 100
    assert sum(b.take() for _ in range(10)) == 3  # never more than the burst saved up


def test_a_flood_is_counted_to_the_last_message_and_logged_once_per_burst(caplog) -> None:
    """Issue 12: 7,459 of 10,000 pings vanished without a trace."""
    caplog.set_level(logging.INFO, logger="agent.control")
    counters = Counters()
    clock = FakeClock()
    gate = CommandGate(counters, rate_per_minute=60, burst=10, clock=clock)
    for _ in range(10_000):
        gate.offer("ping", b'{"request_id": 1}')
    dropped = counters.snapshot("commands.dropped.")
    assert gate.queue.qsize() == 10 and sum(dropped.values()) == 9_990 and dropped == {"rate_limited": 9_990}
    starts = [r for r in caplog.records if "arrive faster" in r.getMessage()]
    assert len(starts) == 1
    for _ in range(120):  # a flood that goes on for two minutes: tokens come back, the burst goes on, no new lines
        clock.t += 1
        for _ in range(100):
            gate.offer("ping", b'{"request_id": 1}')
    assert len([r for r in caplog.records if "arrive faster" in r.getMessage()]) == 1
    assert not [r for r in caplog.records if "burst is over" in r.getMessage()]
    dropped = sum(counters.snapshot("commands.dropped.").values())
    clock.t += 11  # quiet: the next command goes through and the burst is summed up once
    while not gate.queue.empty():
        gate.queue.get_nowait()
    gate.offer("ping", b'{"request_id": 2}')
    ends = [r for r in caplog.records if "burst is over" in r.getMessage()]
    assert len(ends) == 1 and f"{dropped} were dropped" in ends[0].getMessage()


def test_a_payload_over_the_limit_is_refused_without_keeping_it(agent: Agent) -> None:
    counters = Counters()
    gate = CommandGate(counters, rate_per_minute=60, burst=10)
    gate.offer("ping", b"x" * (MAX_PAYLOAD_BYTES + 1))
    name, item = gate.queue.get_nowait()
    assert not isinstance(item, bytes)  # the bytes are not kept in the queue
    r = agent.commands.handle(name, item)
    assert r["ok"] is False and "over the limit" in r["reason"] and r["request_id"] is None


def test_values_from_a_command_are_escaped_and_cut_in_log_lines(agent: Agent, caplog) -> None:
    caplog.set_level(logging.INFO)
    forged = "x\nINFO agent.app: forged line"
    cmd(agent, "feedback", {"request_id": forged, "alert_id": forged, "label": "true_positive"})
    cmd(agent, "feedback", {"request_id": "r", "alert_id": "y" * 1_000_000, "label": "true_positive"})
    cmd(agent, "x" * 100_000 + "\r", {"request_id": "r"})
    for record in caplog.records:
        text = record.getMessage()
        assert "\n" not in text and "\r" not in text, text
        assert len(text) < 2000, len(text)


def test_the_log_formatter_escapes_what_reaches_it() -> None:
    from agent.logsafe import SafeFormatter, clip

    f = SafeFormatter("%(levelname)s %(name)s: %(message)s")
    rec = logging.LogRecord("agent.x", logging.INFO, __file__, 1, "sensor %s", ("a\nINFO agent.y: forged",), None)
    assert f.format(rec) == "INFO agent.x: sensor a\\nINFO agent.y: forged"
    assert clip("z" * 1000).endswith("…[+800 chars]") and len(clip("z" * 1000)) == 200 + len("…[+800 chars]")
    assert clip("tab\there\u2028") == "tab\\there\\u2028"


# -- item 4: reload-model only from allowed directories, size checked, one answer for missing and forbidden ---------


def test_reload_model_outside_the_allowed_directories_reads_like_a_missing_file(tmp_path: Path) -> None:
    allowed, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    good, sha = _copy_model(allowed, "8.0.0")
    outside, _ = _copy_model(elsewhere, "8.0.1")
    (allowed / "link.tflite").symlink_to(outside)  # a symlink inside that points outside is outside
    (allowed / "link.json").symlink_to(outside.with_suffix(".json"))
    a = make_agent(tmp_path / "state", EDGE_AGENT_CALIBRATION__SAMPLES="0", EDGE_AGENT_COMMANDS__MODEL_DIRS=str(allowed))
    try:
        replies = {}
        for label, path in [("missing", allowed / "nope.tflite"), ("outside", outside),
                            ("symlink", allowed / "link.tflite"), ("system", Path("/etc/hostname")),
                            ("dir", allowed)]:
            r = cmd(a, "reload-model", {"request_id": label, "path": str(path), "sha256": sha})
            assert r["ok"] is False
            replies[label] = r["reason"].replace(str(path), "PATH")
        assert len(set(replies.values())) == 1, replies  # no reply tells which files exist
        r = cmd(a, "reload-model", {"request_id": "ok", "path": str(good), "sha256": sha})
        assert r["ok"] and r["model"]["version"] == "8.0.0", r
    finally:
        a.outbox.close()
        a.evidence.close()


def test_by_default_the_bundled_and_the_configured_models_directory_are_allowed(tmp_path: Path) -> None:
    configured, sha = _copy_model(tmp_path / "etc-models", "1.1.0")
    a = make_agent(tmp_path / "state", EDGE_AGENT_CALIBRATION__SAMPLES="0", EDGE_AGENT_MODEL__PATH=str(configured))
    try:
        from agent.control import model_dirs

        assert model_dirs(a.settings) == [bundled_model("pump-anomaly").parent, configured.parent]
        r = cmd(a, "reload-model", {"request_id": "b", "path": str(bundled_model("pump-anomaly")), "sha256": sha})
        assert r["ok"], r
    finally:
        a.outbox.close()
        a.evidence.close()


def test_reload_model_takes_a_bundled_models_name_as_the_model_path_setting_does(tmp_path: Path) -> None:
    import hashlib

    a = make_agent(tmp_path / "state")  # teach-in on: the generic detector learns its normal on site
    try:
        sha = hashlib.sha256(bundled_model("pump-anomaly").read_bytes()).hexdigest()
        r = cmd(a, "reload-model", {"request_id": "same", "path": "pump-anomaly", "sha256": sha})
        assert r["ok"] and r["changed"] is False and r["model"]["name"] == "pump-anomaly", r  # the running one
        generic = bundled_model("generic")
        sha = hashlib.sha256(generic.read_bytes()).hexdigest()
        r = cmd(a, "reload-model", {"request_id": "gen", "path": "generic", "sha256": sha})
        assert r["ok"] and r["changed"] is True and r["model"]["name"] == "generic", r
        assert a.status()["model"]["name"] == "generic"
        assert a.status()["overrides"]["model"]["path"] == str(generic.resolve())
        r = cmd(a, "reload-model", {"request_id": "nope", "path": "no-such-model", "sha256": sha})
        assert not r["ok"] and "no model no-such-model" in r["reason"], r  # any other name is a path, as before
    finally:
        a.outbox.close()
        a.evidence.close()


def test_a_bundled_name_is_refused_when_the_bundled_directory_is_not_allowed(tmp_path: Path) -> None:
    import hashlib

    models = tmp_path / "models"
    models.mkdir()
    a = make_agent(tmp_path / "state", EDGE_AGENT_CALIBRATION__SAMPLES="0", EDGE_AGENT_COMMANDS__MODEL_DIRS=str(models))
    try:
        sha = hashlib.sha256(bundled_model("generic").read_bytes()).hexdigest()
        r = cmd(a, "reload-model", {"request_id": "gen", "path": "generic", "sha256": sha})
        assert not r["ok"] and "no model generic that this gateway may load" in r["reason"], r
        assert a.status()["model"]["name"] == "pump-anomaly"
    finally:
        a.outbox.close()
        a.evidence.close()


def test_a_huge_model_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    import tracemalloc

    models = tmp_path / "models"
    path, _ = _copy_model(models, "9.0.0")
    with open(path, "r+b") as f:
        f.truncate(500 * 2**20)  # sparse: 500 MB on paper, nothing on disk
    a = make_agent(tmp_path / "state", EDGE_AGENT_CALIBRATION__SAMPLES="0", EDGE_AGENT_COMMANDS__MODEL_DIRS=str(models))
    try:
        tracemalloc.start()
        r = cmd(a, "reload-model", {"request_id": "big", "path": str(path), "sha256": "0" * 64})
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert r["ok"] is False and "64 MiB" in r["reason"], r
        assert peak < 16 * 2**20, f"{peak} bytes allocated: the file was read"
    finally:
        a.outbox.close()
        a.evidence.close()


# -- property: any payload to any command gets a reply, never an exception, and a refusal changes nothing ---------

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402

from agent.settings import COMMAND_NAMES  # noqa: E402

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_fields = st.fixed_dictionaries({}, optional={
    "request_id": st.one_of(st.text(max_size=200), st.integers(), st.floats(), st.none(), st.booleans()),
    "threshold": st.one_of(st.floats(), st.integers(), st.none(), st.text(max_size=5), st.booleans()),
    "path": st.one_of(st.text(max_size=50), st.sampled_from([str(bundled_model("pump-anomaly")), "/etc/passwd", "", "."])),
    "sha256": st.one_of(st.text(min_size=64, max_size=64), st.text(max_size=70)),
    "alert_id": st.text(max_size=80), "label": st.sampled_from(["true_positive", "false_positive", "maybe"]),
    "note": st.one_of(st.text(max_size=50), st.integers()),
})
_payloads = st.one_of(
    st.binary(max_size=300),
    _json.map(lambda v: json.dumps(v).encode()),
    _fields.map(lambda d: json.dumps(d).encode()),
    st.just(b'{"request_id": "n", "threshold": NaN}'), st.just(b'[' * 5000 + b']' * 5000),
    st.just(b'{"request_id": "n", "threshold": 1' + b'0' * 400 + b'}'),
)


@pytest.fixture(scope="module")
def shared_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = make_agent(tmp_path_factory.mktemp("state"), EDGE_AGENT_CALIBRATION__SAMPLES="0")
    yield a
    a.outbox.close()
    a.evidence.close()


def _state(a: Agent) -> tuple[Any, ...]:
    p = a.pipeline
    overrides = a.overrides_path.read_bytes() if a.overrides_path.exists() else None
    return (p.params, p.command_threshold, p.model.sha256, p.model_override, p.calibrator.active, p.calibrator.result,
            overrides, a.evidence.counts(), p.snapshot)


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.one_of(st.sampled_from(COMMAND_NAMES), st.text(max_size=20)), raw=_payloads)
def test_any_payload_to_any_command_gets_a_reply_and_a_refusal_changes_nothing(shared_agent: Agent, name: str, raw: bytes) -> None:
    before = _state(shared_agent)
    reply = shared_agent.commands.handle(name, raw)
    assert set(reply) >= {"request_id", "ok", "ts"}
    json.dumps(reply, allow_nan=False)  # the reply itself is valid JSON
    if not reply["ok"]:
        assert reply["reason"] and not reply["reason"].startswith("internal error"), reply
        assert _state(shared_agent) == before, (name, raw, reply)


def test_an_asset_named_on_a_gateway_without_assets_says_to_leave_it_out(agent: Agent) -> None:
    r = cmd(agent, "set-threshold", {"request_id": "a", "asset": "pump-7", "threshold": 2.0})
    assert not r["ok"] and r["reason"] == "no asset 'pump-7' on this gateway (it has no [[assets]]: leave asset out)"
    assert "one of )" not in r["reason"] and agent.status()["overrides"] == {}



def test_a_model_that_needs_a_teach_in_is_refused_where_it_is_off_and_the_old_one_runs_on(agent: Agent) -> None:
    import hashlib

    from agent.records import Reading

    pipe = agent.pipeline
    old, cleaner, scorer = pipe.model, pipe.cleaner, pipe.scorer
    channels = list(old.sidecar.channels)
    for i in range(40):  # windows for the canary
        pipe.process(Reading(1000.0 + i, {ch: 1.0 + 0.01 * (i % 3) for ch in channels}, "s"))
    sha = hashlib.sha256(bundled_model("generic").read_bytes()).hexdigest()
    r = cmd(agent, "reload-model", {"request_id": "gen", "path": "generic", "sha256": sha})
    assert not r["ok"] and "teach-in cannot be off" in r["reason"] and "internal error" not in r["reason"], r
    assert pipe.model is old and pipe.cleaner is cleaner and pipe.scorer is scorer  # nothing half-swapped
    assert agent.status()["model"]["name"] == old.name and "model" not in agent.status()["overrides"]
    windows = pipe.counters.get("pipeline.windows")
    for i in range(40, 50):
        pipe.process(Reading(1000.0 + i, {ch: 1.0 for ch in channels}, "s"))
    assert pipe.counters.get("pipeline.windows") > windows  # the old model scores on


def test_reload_model_whose_debounce_cannot_hold_the_configured_k_is_refused_and_the_old_model_runs_on(
        tmp_path: Path) -> None:
    """EDGE_AGENT_DECISION__K=4 fits the running model's n (5) but not a new sidecar's n (3): the swap is refused
    with the reason before anything is replaced (it used to be swapped half-way, answer 'internal error', and
    raise ValueError on the next new sensor's first window)."""
    models = tmp_path / "models"
    path, sha = _copy_model(models, "3.0.0")
    sc_path = path.with_suffix(".json")
    sc = json.loads(sc_path.read_text())
    sc["decision"] = {**sc["decision"], "k": 2, "n": 3}
    sc_path.write_text(json.dumps(sc))
    a = make_agent(tmp_path / "state", EDGE_AGENT_CALIBRATION__SAMPLES="0", EDGE_AGENT_DECISION__K="4",
                   EDGE_AGENT_COMMANDS__MODEL_DIRS=str(models))
    try:
        before = a.pipeline.params
        r = cmd(a, "reload-model", {"request_id": "k", "path": str(path), "sha256": sha})
        assert not r["ok"], r
        assert "decision k=4 (EDGE_AGENT_DECISION__K) exceeds n=3 (its sidecar decision.n)" in r["reason"], r
        assert a.status()["model"]["version"] != "3.0.0" and a.pipeline.params == before
        assert (before.k, before.n) == (4, 5)
        a.pipeline.process(Reading(1.0, {c: 1.0 for c in a.pipeline.model.sidecar.channels}, "new-sensor"))
    finally:
        a.outbox.close()
        a.evidence.close()


def test_feedback_sent_again_without_a_note_keeps_the_note(agent: Agent) -> None:
    """A repeated label without a note replied changed: false but wiped the note export-feedback writes."""
    from agent.evidence import evidence_payload

    agent.evidence.add("a1", "replay", evidence_payload(["Current"], [(1.6e9 + i, (1.0,)) for i in range(4)], score=3.0))
    first = cmd(agent, "feedback", {"request_id": "1", "alert_id": "a1", "label": "true_positive", "note": "valve stuck"})
    again = cmd(agent, "feedback", {"request_id": "2", "alert_id": "a1", "label": "true_positive"})
    assert first["ok"] and again["ok"] and again["changed"] is False
    assert [(a, lab, note) for a, lab, note, _ in agent.evidence.labelled()] == [("a1", "true_positive", "valve stuck")]


def test_feedback_that_changes_only_the_note_answers_changed(agent: Agent) -> None:
    """The same label with a new note replaced the stored note yet replied changed: false."""
    from agent.evidence import evidence_payload

    agent.evidence.add("a1", "replay", evidence_payload(["Current"], [(1.6e9 + i, (1.0,)) for i in range(4)], score=3.0))
    cmd(agent, "feedback", {"request_id": "1", "alert_id": "a1", "label": "true_positive", "note": "valve stuck"})
    edited = cmd(agent, "feedback", {"request_id": "2", "alert_id": "a1", "label": "true_positive", "note": "seal worn"})
    assert edited["ok"] and edited["changed"] is True, edited
    assert [(a, lab, note) for a, lab, note, _ in agent.evidence.labelled()] == [("a1", "true_positive", "seal worn")]
    same = cmd(agent, "feedback", {"request_id": "3", "alert_id": "a1", "label": "true_positive", "note": "seal worn"})
    assert same["ok"] and same["changed"] is False, same


def test_reloading_the_running_generic_detector_changes_nothing(tmp_path: Path) -> None:
    """The default model: its spec names no channels, the running one has the source's; compared as they were, the
    reload swapped it in again (changed: true, recent scores forgotten, an override 'by command'), and SIGHUP too."""
    import hashlib

    from agent.records import Reading

    a = make_agent(tmp_path / "state", EDGE_AGENT_MODEL__PATH="generic")
    try:
        for i in range(20):
            a.pipeline.process(Reading(float(i), {"Current": 1.0 + i % 3, "Pressure": 2.0}))
        snap = a.pipeline.snapshot
        sha = hashlib.sha256(bundled_model("generic").read_bytes()).hexdigest()
        r = cmd(a, "reload-model", {"request_id": "g", "path": "generic", "sha256": sha})
        assert r["ok"] and r["changed"] is False, r
        assert a.pipeline.snapshot is snap and a.status()["overrides"] == {}
    finally:
        a.outbox.close()
        a.evidence.close()
