"""The README documents every setting and every topic the agent publishes."""

from __future__ import annotations

from pathlib import Path

from agent.settings import SOURCE_KINDS, known_env_names

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme():
    missing = [n for n in known_env_names() if f"`{n}`" not in README]
    assert not missing, f"README lacks {missing}"


def test_source_kinds_do_not_share_a_variable_with_different_meanings():
    seen: dict[str, tuple[str, object]] = {}
    for kind, cls in SOURCE_KINDS.items():
        for name, field in cls.model_fields.items():
            if name in seen and name not in ("kind", "sensor", "timestamp_field"):
                raise AssertionError(f"EDGE_AGENT_SOURCE__{name.upper()} means different things for {seen[name][0]} and {kind}")
            seen.setdefault(name, (kind, field.annotation))


def test_every_topic_is_documented():
    for topic in ("`status`", "`alerts`", "`summary`"):
        assert f"### {topic}" in README
