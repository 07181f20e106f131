"""The configuration reference as a TOML file: ``deploy/agent.toml.example``, rendered from the settings model.

``edge-agent config-reference --toml`` prints :func:`render_toml_example`; a test and ``.ci/check-deploy`` fail when
the checked-in example differs. Like the env example: every key commented out with its default, so the file as
shipped changes nothing; table headers are left in (an empty table is the defaults). The Modbus tables, which
exist only in the file, follow as a commented worked example with every key.
"""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from agent.modbus_config import BusSettings, ChannelMap, DeviceSettings
from agent.reference import _PURE_FACTORIES, _TITLES, _description, _doc, _is_model
from agent.settings import FILE_ONLY, SOURCE_KINDS, Settings

HEADER = """\
# edge-agent configuration file: /etc/edge-agent/agent.toml (or the file named by EDGE_AGENT_CONFIG_FILE).
#
# Generated from the settings model by `edge-agent config-reference --toml`; do not edit
# deploy/agent.toml.example by hand. The keys are the env variables' names without EDGE_AGENT_, in lower case,
# their `__` levels as tables: EDGE_AGENT_MQTT__HOST is `host` in [mqtt]. Env variables (and the env file)
# override this file. Every setting is listed with its default, commented out: uncomment a line and change its
# value to override it; "" means the default. An unknown key or an invalid value is an error: the agent prints
# one line per problem (key path and line) and exits 78. `edge-agent check-config` shows the result.
#
# Secrets: do not put the MQTT password here (see agent.env.example). Modbus buses and devices exist only in
# this file: see the [modbus] example at the end and docs/modbus.md.
"""
SKIP = {"config_file"}  # the file cannot name itself


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal (None as "", the settings' "use the default")."""
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, PurePath):
        return json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        from agent.config_file import key_path

        return "{" + ", ".join(f"{key_path([k])} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value), ensure_ascii=False)


def _default(field: FieldInfo) -> tuple[str, str]:
    """(TOML literal, note) of a field's default; "" when computed, absent or secret."""
    if field.annotation in (SecretStr, SecretStr | None):
        return '""', " Secret: no default is ever shown here."
    if field.default_factory is not None:
        if field.default_factory in _PURE_FACTORIES:
            return toml_value(field.default_factory()), ""  # type: ignore[call-arg]
        return '""', ""
    if field.default is PydanticUndefined:
        return '""', " Required."
    return toml_value(field.default), ""


def _key(name: str) -> str:
    return name


def _field_lines(name: str, field: FieldInfo, fallback: str = "") -> list[str]:
    value, note = _default(field)
    return [f"# {_description(field, fallback)}{note}", f"#{_key(name)} = {value}"]


def _section(model: type[BaseModel]) -> list[str]:
    out: list[str] = []
    for name, field in model.model_fields.items():
        if not _is_model(field.annotation) and name != "source" and name not in SKIP and name not in FILE_ONLY:
            out += _field_lines(name, field)
    return out


def render_toml_example() -> str:
    """The commented TOML file listing every setting with its default and a one-line explanation."""
    lines = HEADER.rstrip("\n").split("\n")
    lines += ["", "## General (EDGE_AGENT_CONFIG_FILE itself can only be set in the environment or the env file)"]
    lines += _section(Settings)
    for name, field in Settings.model_fields.items():
        if name in FILE_ONLY:
            continue
        if name == "source":
            lines += ["", "[source]"]
            for kind, cls in SOURCE_KINDS.items():
                lines += ["", f"## kind = \"{kind}\": {_doc(cls)}"]
                for n, f in cls.model_fields.items():
                    if n == "kind" and kind != "replay":
                        continue  # one kind line; its comment lists the choices
                    lines += _field_lines(n, f, f"Source of readings: {' | '.join(SOURCE_KINDS)}." if n == "kind" else "")
        elif _is_model(field.annotation):
            model = field.annotation
            assert isinstance(model, type)
            lines += ["", f"## {_TITLES.get(name, name.capitalize())}. {_doc(model)}", f"[{name}]"]
            lines += _section(model)
    lines += ["", *_modbus_example(), "", *_assets_example()]
    return "\n".join(lines) + "\n"


def _assets_example() -> list[str]:
    """Two commented assets: uncommented (with the Modbus example above), a valid configuration of two machines."""
    from agent.asset_settings import AssetSettings

    return [
        "## Assets (configuration file only): several machines on this gateway, one pipeline each. Without any",
        "## [[assets]] the gateway is one machine, configured by the sections above. With assets, each names where",
        "## its readings come from and what differs from the sections above (its defaults); its messages go to",
        "## {topic_prefix}/{device_id}/asset/<id>/alerts (summary, advice) and name it.",
        *(f"## {n}: {_description(f, '')}" for n, f in AssetSettings.model_fields.items()),
        "#[[assets]]",
        '#id = "meter-1"',
        '#source = {kind = "modbus", devices = ["meter-1"]}',
        '#calibration = {duration = "24h"}',
        "",
        "#[[assets]]",
        '#id = "compressor"',
        '#source = {kind = "mqtt", topics = ["plant/compressor/#"], sensor_pattern = "plant/compressor/{sensor}"}',
        '#model = {path = "generic"}',
        "#decision = {k = 4, n = 6}",
    ]


def _modbus_example() -> list[str]:
    """A commented bus, device and channels with every key: uncommented, it is a valid configuration."""
    bus = {"kind": '"rtu"', "port": '"/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10KXYZ1-if00-port0"'}
    device = {"bus": '"rs485-1"', "unit": "1"}
    out = [
        "## Modbus (configuration file only; docs/modbus.md). A bus is declared once; devices name their bus; the",
        "## source (and, later, assets) names the devices: [source] kind = \"modbus\", devices = [\"meter-1\"].",
        "## Example: an energy meter with float32 input registers on an RS-485 adapter.",
        f"## [modbus.buses.NAME]: {_doc(BusSettings)}",
        "#[modbus.buses.rs485-1]",
    ]
    tcp_only = {"host", "tcp_port"}
    for name, field in BusSettings.model_fields.items():
        if name not in tcp_only:
            value = bus.get(name, _default(field)[0])
            out += [f"# {_description(field, '')}", f"#{name} = {value}"]
    out += ["", "## A Modbus TCP device or gateway (a bus of its own, polled by its own thread).", "#[modbus.buses.plc]",
            '#kind = "tcp"']
    for name in sorted(tcp_only, key=list(BusSettings.model_fields).index):
        field = BusSettings.model_fields[name]
        value = '"192.168.10.20"' if name == "host" else _default(field)[0]
        out += [f"# {_description(field, '')}", f"#{name} = {value}"]
    out += ["", f"## [modbus.devices.NAME]: {_doc(DeviceSettings)}", "#[modbus.devices.meter-1]"]
    for name, field in DeviceSettings.model_fields.items():
        if name == "channels":
            continue
        value = device.get(name, _default(field)[0])
        out += [f"# {_description(field, '')}", f"#{name} = {value}"]
    out += [
        "",
        "## [modbus.devices.NAME.channels]: one line per channel, name = {" + ", ".join(ChannelMap.model_fields) + "}.",
        *(f"## {n}: {_description(f, '')}" for n, f in ChannelMap.model_fields.items()),
        "#[modbus.devices.meter-1.channels]",
        '#"Voltage L1" = {table = "input", address = 0, type = "float32"}',
        '#"Current L1" = {table = "input", address = 6, type = "float32"}',
        '#"Total kWh" = {table = "input", address = 342, type = "float32"}',
        '#"Running" = {table = "discrete", address = 0}',
        '#"Speed" = {table = "holding", address = 100, type = "uint16", scale = 0.1}',
    ]
    return out


def render_file_only_markdown() -> str:
    """The README's tables for the keys that exist only in the configuration file."""
    head = ["| key | default | meaning |", "|---|---|---|"]

    def rows(model: type[BaseModel]) -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            value, note = _default(field)
            shown = "(empty)" if value == '""' else f"`{value}`"
            desc = _description(field, '')
            desc += "" if desc.endswith(note.strip()) else note  # a description may say "Required." itself
            out.append(f"| `{name}` | {shown} | {desc.replace('|', '/')} |")
        return out

    out = ["### Modbus (configuration file only)", "",
           "Buses, devices and register maps have no env variables: they live in the TOML file "
           "([docs/modbus.md](docs/modbus.md)).", "",
           f"`[modbus.buses.NAME]`: {_doc(BusSettings)}", "", *head, *rows(BusSettings), "",
           f"`[modbus.devices.NAME]`: {_doc(DeviceSettings)}", "", *head, *rows(DeviceSettings), "",
           f"`[modbus.devices.NAME.channels]`, one `name = {{...}}` per channel: {_doc(ChannelMap)}", "", *head,
           *rows(ChannelMap)]
    from agent.asset_settings import AssetSettings

    out += ["", "### Assets (configuration file only)", "",
            "Several machines on one gateway ([README: one gateway, many machines](#one-gateway-many-machines)); "
            "without `[[assets]]` the gateway is one machine.", "",
            f"`[[assets]]`: {_doc(AssetSettings)}", "", *head, *rows(AssetSettings)]
    return "\n".join(out) + "\n"


def render_file_only(settings: Any) -> str:
    """The file-only tables in force (``check-config``), as TOML; "" when there are none."""
    out: list[str] = []
    dumped = settings.model_dump(mode="json", exclude_unset=False)
    for name in FILE_ONLY:
        data = dumped.get(name) or {}
        if isinstance(data, list):  # [[assets]]: the keys each asset sets
            for asset in getattr(settings, name):
                out.append(f"[[{name}]]")
                given = asset.model_dump(mode="json", exclude_unset=True)
                out += [f"{k} = {toml_value(v)}" for k, v in given.items()]
            continue
        _dump(out, (name,), data)
    return "\n".join(out) + "\n" if out else ""


def _dump(out: list[str], path: tuple[str, ...], data: dict[str, Any]) -> None:
    from agent.config_file import key_path

    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    inline = path[-1] == "channels"
    if scalars or inline:
        out.append(f"[{key_path(path)}]")
        out += [f"{key_path([k])} = {toml_value(v)}" for k, v in scalars.items()]
    if inline:
        for k, v in tables.items():
            body = ", ".join(f"{kk} = {toml_value(vv)}" for kk, vv in v.items() if vv is not None)
            out.append(f"{key_path([k])} = {{{body}}}")
        return
    for k, v in tables.items():
        _dump(out, (*path, k), v)
