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
