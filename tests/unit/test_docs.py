"""The README documents every setting and every topic the agent publishes, and stays in step with the code."""

from __future__ import annotations

import re
from pathlib import Path

from agent.reference import render_markdown
from agent.settings import SOURCE_KINDS, known_env_names

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme():
    missing = [n for n in known_env_names() if f"`{n}`" not in README]
    assert not missing, f"README lacks {missing}"


def test_readme_configuration_tables_are_generated_from_the_settings():
    m = re.search(r"<!-- config-reference:begin[^\n]*\n(.*?)<!-- config-reference:end -->", README, re.S)
    assert m, "README lacks the generated configuration section"
    assert m.group(1) == render_markdown(), (
        "README configuration tables are out of date: regenerate them from `edge-agent config-reference --markdown`"
    )


def test_source_kinds_do_not_share_a_variable_with_different_meanings():
    seen: dict[str, str] = {}
    for kind, cls in SOURCE_KINDS.items():
        for name in cls.model_fields:
            if name in seen and name not in ("kind", "sensor", "timestamp_field", "gather_ms"):
                raise AssertionError(f"EDGE_AGENT_SOURCE__{name.upper()} means different things for {seen[name]} and {kind}")
            seen.setdefault(name, kind)


def test_every_topic_is_documented():
    for topic in ("`status`", "`alerts`", "`summary`", "`stats`", "`cmd/<name>`"):
        assert f"### {topic}" in README


def test_every_command_is_documented():
    from agent.settings import COMMAND_NAMES  # Control checks that it has a handler for each, no more

    names = set(COMMAND_NAMES)
    assert {"ping", "status", "set-threshold", "calibrate", "reload-model", "feedback"} <= names
    for name in names:
        assert f"| `{name}` |" in README, name


def test_links_to_docs_exist():
    for link in re.findall(r"\]\(((?:docs|models)/[^)#]+)\)", README):
        assert (ROOT / link).exists(), link


def _table_after(heading: str) -> dict[str, str]:
    """The first field table after ``heading``: each documented name (a row may name several) -> its meaning."""
    section = README[README.index(heading):]
    out: dict[str, str] = {}
    for line in section.splitlines()[1:]:
        if line.startswith("### ") or line.startswith("## "):
            break
        m = re.match(r"\| ((?:`[^`]+`(?:, )?)+) \| (.*) \|$", line)
        if m:
            for name in re.findall(r"`([^`]+)`", m.group(1)):
                out[name] = m.group(2)
    return out


def test_every_stats_field_is_documented(tmp_path):
    """Every field of the stats payload a real agent publishes has a row in the README's stats table (the identity
    and state fields are the status table's)."""
    from agent.app import Agent
    from agent.settings import load_settings

    a = Agent(load_settings(None, {"EDGE_AGENT_STATE_DIR": str(tmp_path / "state"), "EDGE_AGENT_DEVICE_ID": "gw"}))
    try:
        fields = set(a.stats()) - {"ts", "device_id", "state"}
    finally:
        a.outbox.close()
        a.evidence.close()
    table = _table_after("### `stats`")
    assert not fields - set(table), f"README's stats table lacks {sorted(fields - set(table))}"
    for key in ("advised", "none", "suppressed"):  # the advice counters, each explained
        assert f"`{key}`" in table["advice"], table["advice"]


def test_the_calibrate_reply_fields_are_documented(tmp_path):
    """The calibrate command's reply, while a teach-in runs (``collected``) and when it starts one: every field in
    the README's command table."""
    import json

    from agent.app import Agent
    from agent.records import Reading
    from agent.settings import load_settings

    a = Agent(load_settings(None, {"EDGE_AGENT_STATE_DIR": str(tmp_path / "state"), "EDGE_AGENT_DEVICE_ID": "gw",
                                   "EDGE_AGENT_MODEL__PATH": "pump-anomaly"}))
    try:
        channels = a.pipeline.model.sidecar.channels
        for i in range(5):
            a.pipeline.process(Reading(float(i), {c: 1.0 + i % 3 for c in channels}))
        running = a.commands.handle("calibrate", json.dumps({"request_id": "r"}).encode())
        assert running["ok"] and running["collected"] == 5, running
    finally:
        a.outbox.close()
        a.evidence.close()
    row = next(line for line in README.splitlines() if line.startswith("| `calibrate` |"))
    reply = row.rstrip(" |").rsplit("|", 1)[1]
    for field in set(running) - {"request_id", "ok", "ts"}:
        assert f"`{field}`" in reply, (field, reply)


def test_a_required_key_says_so_once():
    # the Modbus keys' descriptions end in "Required." themselves; the tables showed "Required. Required."
    assert "Required. Required." not in render_markdown()
