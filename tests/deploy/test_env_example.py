"""deploy/agent.env.example: generated from the settings model, complete, harmless, machine-independent."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from agent import reference
from agent.reference import render_env_example, rendered_env_names
from agent.settings import ENV_PREFIX, SOURCE_KINDS, Settings, known_env_names, load_settings, secret_env_names
from deploy_support import REPO

EXAMPLE = REPO / "deploy" / "agent.env.example"
REGENERATE = "regenerate it: edge-agent config-reference > deploy/agent.env.example"


def test_example_is_up_to_date() -> None:
    assert EXAMPLE.read_text() == render_env_example(), f"deploy/agent.env.example is out of date; {REGENERATE}"


def test_every_setting_is_listed() -> None:
    assert set(rendered_env_names(render_env_example())) == set(known_env_names())


def test_every_line_is_a_comment_or_blank() -> None:
    for line in render_env_example().splitlines():
        assert line == "" or line.startswith("#"), line


def test_every_setting_has_an_explanation_line() -> None:
    lines = render_env_example().splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"#{ENV_PREFIX}\w+=", line):
            above = lines[i - 1]
            assert above.startswith("# ") and len(above) > 6, f"no explanation above {line}"


def test_secrets_are_never_rendered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_AGENT_MQTT__PASSWORD", "hunter2-secret")
    text = render_env_example()
    assert "hunter2" not in text
    for name in secret_env_names():
        assert re.search(rf"^#{name}=$", text, re.M), name


def test_does_not_depend_on_the_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    before = render_env_example()
    monkeypatch.setattr("socket.gethostname", lambda: "some-other-gateway")
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    after = render_env_example()
    assert after == before
    assert "some-other-gateway" not in after and str(tmp_path) not in after


def _uncommented(text: str, skip_kinds: set[str]) -> str:
    """The example with every assignment uncommented, except in the source sections of ``skip_kinds``."""
    out, skipping = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            skipping = any(line.startswith(f"## Source: {k} ") for k in skip_kinds)
        if not skipping and re.match(rf"#{ENV_PREFIX}\w+=", line):
            line = line[1:]
        out.append(line)
    return "\n".join(out) + "\n"


def test_uncommenting_everything_gives_the_defaults(tmp_path: Path) -> None:
    env = tmp_path / "agent.env"
    env.write_text(_uncommented(render_env_example(), skip_kinds=set(SOURCE_KINDS) - {"replay"}))
    loaded = load_settings(env, environ={})
    assert loaded.model_dump() == Settings().model_dump()


@pytest.mark.parametrize(
    ("kind", "required"),
    [
        ("serial", {"PORT": "/dev/ttyUSB0"}),
        ("mqtt", {"TOPICS": "plant/#"}),
    ],  # modbus: its devices are in the configuration file (tests/unit/test_config_file.py)
)
def test_each_source_section_loads_once_its_required_values_are_set(tmp_path: Path, kind: str, required: dict[str, str]) -> None:
    others = set(SOURCE_KINDS) - {kind}
    text = _uncommented(render_env_example(), skip_kinds=others)
    for name, value in required.items():
        text = text.replace(f"\n{ENV_PREFIX}SOURCE__{name}=\n", f"\n{ENV_PREFIX}SOURCE__{name}={value}\n")
    env = tmp_path / "agent.env"
    env.write_text(text)
    loaded = load_settings(env, environ={})
    assert loaded.source.kind == kind


def test_default_text_of_computed_and_required_fields() -> None:
    fields = Settings.model_fields
    assert reference.default_text(fields["device_id"]) == ("", "")
    assert reference.default_text(fields["state_dir"]) == ("", "")
    assert reference.default_text(fields["log_level"]) == ("INFO", "")
    from agent.settings import SerialSourceSettings

    assert reference.default_text(SerialSourceSettings.model_fields["port"]) == ("", "Required.")
    assert reference.default_text(SerialSourceSettings.model_fields["checksum"]) == ("false", "")
