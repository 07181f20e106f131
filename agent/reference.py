"""The configuration reference: ``deploy/agent.env.example`` rendered from the settings model.

``edge-agent config-reference`` prints :func:`render_env_example`; CI fails when the checked-in example differs.
Every assignment is commented out, so the example as shipped changes nothing. Values depend only on the
model, never on the machine: defaults computed at run time (host name, state directory) and absent defaults
render empty, and an empty value means "the default" (the settings ignore empty variables), so uncommenting
any line as it stands is harmless. Secrets are never rendered.
"""

from __future__ import annotations

import enum
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from agent.settings import ENV_PREFIX, FILE_ONLY, SOURCE_KINDS, Settings

# Default factories whose result does not depend on the machine; any other factory is "computed at run time".
_PURE_FACTORIES = (list, dict, tuple, set, frozenset)
_TITLES = {"mqtt": "MQTT"}

HEADER = """\
# edge-agent configuration: /etc/edge-agent/agent.env (or the file given with --env-file).
#
# Generated from the settings model by `edge-agent config-reference`; do not edit deploy/agent.env.example by
# hand. Every setting is listed with its default, commented out: uncomment a line and change its value to
# override it. An empty value means the default. Variables in the process environment override this file.
# An unknown EDGE_AGENT_* key or an invalid value is an error: the agent prints one line per problem and exits
# 78 (systemd does not restart it then; fix the file and run `systemctl restart edge-agent`).
#
# Secrets: do not put the MQTT password here. The service loads
# /etc/edge-agent/credentials/mqtt-password (mode 0600) as a systemd credential and the agent reads it
# from $CREDENTIALS_DIRECTORY; EDGE_AGENT_MQTT__PASSWORD_FILE points elsewhere.
"""


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _is_secret(field: FieldInfo) -> bool:
    return field.annotation in (SecretStr, SecretStr | None)


def _format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(_format_value(v) for v in value)
    if isinstance(value, PurePath):
        return str(value)
    return str(value)


def _quote(value: str) -> str:
    # dotenv: an unquoted value ends at " #"; quote anything that is not plainly one word.
    if value and (any(c.isspace() for c in value) or any(c in value for c in "#'\"\\$`")):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def default_text(field: FieldInfo) -> tuple[str, str]:
    """(value, note) for a field's default: a stable text, empty when it is computed, absent or secret."""
    if _is_secret(field):
        return "", ""
    if field.default_factory is not None:
        if field.default_factory in _PURE_FACTORIES:
            return _format_value(field.default_factory()), ""  # type: ignore[call-arg]
        return "", ""  # computed on the machine (host name, state directory): the description says how
    if field.default is PydanticUndefined:
        return "", "Required."
    return _quote(_format_value(field.default)), ""


def _description(field: FieldInfo, fallback: str) -> str:
    text = (field.description or "").strip() or fallback
    return " ".join(text.split())


def _field_lines(env: str, field: FieldInfo, fallback: str = "") -> list[str]:
    value, note = default_text(field)
    desc = _description(field, fallback)
    if note:
        desc = f"{desc} {note}" if desc else note
    if _is_secret(field):
        desc += " Secret: no default is ever shown here."
    return [f"# {desc}", f"#{env}={value}"]


def _model_lines(model: type[BaseModel], prefix: str) -> list[str]:
    """Lines for the leaf fields of ``model``; nested models become their own sections."""
    out: list[str] = []
    for name, field in model.model_fields.items():
        if name == "source" or _is_model(field.annotation) or (model is Settings and name in FILE_ONLY):
            continue
        out += _field_lines(f"{prefix}{name.upper()}", field)
    return out


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


def _source_sections(prefix: str) -> list[str]:
    out: list[str] = []
    for kind, cls in SOURCE_KINDS.items():
        fallback = f"Source of readings: {' | '.join(SOURCE_KINDS)}; this section applies when it is {kind}."
        out += ["", f"## Source: {kind} (EDGE_AGENT_SOURCE__KIND={kind}). {_doc(cls)}"]
        if kind == "replay":
            out.append("# The default source. Set EDGE_AGENT_SOURCE__KIND to use the serial or mqtt section instead.")
        else:
            out.append(f"# Uncomment this section (and leave the other source sections commented) to read from {kind}.")
        for name, field in cls.model_fields.items():
            out += _field_lines(f"{prefix}{name.upper()}", field, fallback if name == "kind" else "")
    return out


def render_env_example() -> str:
    """The commented env file listing every setting with its default and a one-line explanation."""
    lines = HEADER.rstrip("\n").split("\n")
    lines += ["", "## General"]
    lines += _model_lines(Settings, ENV_PREFIX)
    for name, field in Settings.model_fields.items():
        if name in FILE_ONLY:
            continue  # no env variables: only in the configuration file (deploy/agent.toml.example)
        if name == "source":
            lines += _source_sections(f"{ENV_PREFIX}SOURCE__")
        elif _is_model(field.annotation):
            model = field.annotation
            assert isinstance(model, type)
            lines += ["", f"## {_TITLES.get(name, name.capitalize())}. {_doc(model)}"]
            lines += _model_lines(model, f"{ENV_PREFIX}{name.upper()}__")
    return "\n".join(lines) + "\n"


def rendered_env_names(text: str) -> list[str]:
    """The EDGE_AGENT_* names assigned (commented or not) in an env example text."""
    names = []
    for line in text.splitlines():
        body = line.lstrip("#").strip()
        if body.startswith(ENV_PREFIX) and "=" in body:
            names.append(body.split("=", 1)[0])
    return names


def _md_row(env: str, field: FieldInfo, fallback: str = "") -> str:
    value, note = default_text(field)
    computed = not value and field.default_factory is not None and field.default_factory not in _PURE_FACTORIES
    desc = _description(field, fallback) + (f" {note}" if note else "")
    shown = f"`{value}`" if value else "(computed)" if computed else "(empty)"
    return f"| `{env}` | {shown} | {desc.replace('|', '/')} |"


def render_markdown() -> str:
    """The same reference as Markdown tables, one per section (the README's configuration tables)."""
    head = ["| variable | default | meaning |", "|---|---|---|"]
    out = ["### General", "", *head]
    out += [_md_row(f"{ENV_PREFIX}{n.upper()}", f) for n, f in Settings.model_fields.items()
            if n != "source" and n not in FILE_ONLY and not _is_model(f.annotation)]
    for name, field in Settings.model_fields.items():
        if name in FILE_ONLY:
            continue
        if name == "source":
            for kind, cls in SOURCE_KINDS.items():
                out += ["", f"### Source `{kind}` (`EDGE_AGENT_SOURCE__KIND={kind}`)", "", _doc(cls), "", *head]
                out += [_md_row(f"{ENV_PREFIX}SOURCE__{n.upper()}", f,
                                f"Source of readings: {', '.join(SOURCE_KINDS)}." if n == "kind" else "")
                        for n, f in cls.model_fields.items()]
        elif _is_model(field.annotation):
            model = field.annotation
            assert isinstance(model, type)
            out += ["", f"### {_TITLES.get(name, name.capitalize())}", "", _doc(model), "", *head]
            out += [_md_row(f"{ENV_PREFIX}{name.upper()}__{n.upper()}", f) for n, f in model.model_fields.items()]
    from agent.reference_toml import render_file_only_markdown

    return "\n".join(out) + "\n\n" + render_file_only_markdown()
