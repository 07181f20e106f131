"""The TOML configuration file: nested names, env over file, one line per problem with key path and line, exit 78;
the generated deploy/agent.toml.example; the cross-section checks (MQTT source broker, Modbus references)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.reference_toml import render_toml_example
from agent.settings import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "agent.toml.example"

MODBUS = """
[source]
kind = "modbus"

[modbus.buses.rs485-1]
kind = "rtu"
port = "/dev/ttyUSB0"

[modbus.devices.meter-1]
bus = "rs485-1"
unit = 3
[modbus.devices.meter-1.channels]
"Voltage L1" = {table = "input", address = 0, type = "float32"}
"""


def _load(tmp_path: Path, text: str, **env: str) -> Settings:
    f = tmp_path / "agent.toml"
    f.write_text(text)
    return load_settings(environ={"EDGE_AGENT_CONFIG_FILE": str(f), **env})


def _problems(tmp_path: Path, text: str, **env: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text, **env)
    return e.value.problems


def test_nested_tables_carry_the_env_names(tmp_path: Path) -> None:
    s = _load(tmp_path, 'device_id = "gw-9"\n[mqtt]\nhost = "broker.lan"\nport = 8883\ntls = true\n'
                        '[source]\nkind = "mqtt"\ntopics = ["a/+/t", "b/#"]\nbroker_host = "10.0.0.2"\n'
                        '[cleaning]\nmax_hold_s = 2.5\n')
    assert (s.device_id, s.mqtt.host, s.mqtt.port, s.mqtt.tls) == ("gw-9", "broker.lan", 8883, True)
    assert s.source.kind == "mqtt" and s.source.topics == ["a/+/t", "b/#"]  # type: ignore[union-attr]
    assert s.cleaning.max_hold_s == 2.5


def test_environment_and_env_file_override_the_file(tmp_path: Path) -> None:
    env_file = tmp_path / "agent.env"
    env_file.write_text("EDGE_AGENT_MQTT__PORT=1885\n")
    f = tmp_path / "agent.toml"
    f.write_text('[mqtt]\nhost = "from-file"\nport = 1884\nkeepalive_s = 45\n')
    s = load_settings(env_file, environ={"EDGE_AGENT_CONFIG_FILE": str(f), "EDGE_AGENT_MQTT__HOST": "from-env"})
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.keepalive_s) == ("from-env", 1885, 45)


def test_the_env_file_may_name_the_config_file(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text('[mqtt]\nhost = "named-in-env-file"\n')
    env_file = tmp_path / "agent.env"
    env_file.write_text(f"EDGE_AGENT_CONFIG_FILE={f}\n")
    assert load_settings(env_file, environ={}).mqtt.host == "named-in-env-file"


def test_problems_name_key_path_value_rule_and_line(tmp_path: Path) -> None:
    got = _problems(tmp_path, '[mqtt]\nhots = "x"\n\nport = "abc"\n' + MODBUS.replace('type = "float32"', 'type = "float16"'))
    f = tmp_path / "agent.toml"
    assert got[0] == f"mqtt.hots ({f} line 2): unknown setting (did you mean mqtt.host?)"
    assert got[1].startswith(f"mqtt.port = 'abc' ({f} line 4): Input should be a valid integer")
    assert got[2].startswith(f"modbus.devices.meter-1.channels.\"Voltage L1\".type = 'float16' ({f} line 17): ")
    assert len(got) == 3


def test_a_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    got = _problems(tmp_path, '[mqtt]\nhost = "a"\nport = = 3\n')
    assert len(got) == 1 and "not valid TOML" in got[0] and "line 3" in got[0]


def test_a_named_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(environ={"EDGE_AGENT_CONFIG_FILE": str(tmp_path / "nope.toml")})
    assert e.value.problems == [f"EDGE_AGENT_CONFIG_FILE={tmp_path / 'nope.toml'}: no such file"]


def test_the_file_cannot_name_itself_and_tables_are_not_values(tmp_path: Path) -> None:
    got = _problems(tmp_path, 'config_file = "x.toml"\n[mqtt.host]\nname = "a"\n')
    assert "the file cannot name itself" in got[0]
    assert got[1].startswith("mqtt.host (") and got[1].endswith("must be a value, not a table")


def test_modbus_tables_validate_and_reference_each_other(tmp_path: Path) -> None:
    s = _load(tmp_path, MODBUS)
    assert s.source.kind == "modbus"
    assert s.modbus.devices["meter-1"].unit == 3 and s.modbus.buses["rs485-1"].port == "/dev/ttyUSB0"
    got = _problems(tmp_path, MODBUS.replace('bus = "rs485-1"', 'bus = "rs485-2"'))
    assert got == [f"modbus.devices.meter-1.bus = 'rs485-2' ({tmp_path / 'agent.toml'} line 10): bus 'rs485-2' is not "
                   "declared as [modbus.buses.rs485-2] (declared: rs485-1)"]  # the key and its line, as any other
    got = _problems(tmp_path, MODBUS, EDGE_AGENT_SOURCE__DEVICES="meter-1,meter-9")
    assert got == ["EDGE_AGENT_SOURCE__DEVICES='meter-1,meter-9': meter-9 not declared as [modbus.devices.NAME] "
                   "(declared: meter-1)"]
    got = _problems(tmp_path, MODBUS.replace('"Voltage L1" = {table = "input", address = 0, type = "float32"}',
                                             'x = {table = "coil", address = 0, type = "int16"}\n'
                                             'y = {address = 1, type = "bit"}'))
    assert any("type must be bool" in p for p in got) and any("type bit needs bit" in p for p in got)


def test_modbus_source_without_devices_is_refused() -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(environ={"EDGE_AGENT_SOURCE__KIND": "modbus"})
    assert "no [modbus.devices.NAME] in the configuration file" in e.value.problems[0]


def test_modbus_tables_have_no_env_variables() -> None:
    from agent.settings import known_env_names

    assert not [n for n in known_env_names() if n.startswith("EDGE_AGENT_MODBUS")]
    assert "EDGE_AGENT_CONFIG_FILE" in known_env_names() and "EDGE_AGENT_SOURCE__DEVICES" in known_env_names()


# -- the MQTT source's broker against the upstream one ------------------------------------------------------------


@pytest.mark.parametrize(("env", "expected"), [
    ({"EDGE_AGENT_MQTT__TLS": "true", "EDGE_AGENT_MQTT__USERNAME": "gw", "EDGE_AGENT_SOURCE__BROKER_PORT": "1884"},
     "would get the upstream user name and password (EDGE_AGENT_MQTT__USERNAME) in clear text"),
    ({"EDGE_AGENT_MQTT__TLS": "true", "EDGE_AGENT_MQTT__USERNAME": "gw", "EDGE_AGENT_SOURCE__BROKER_HOST": "10.0.0.2"},
     "in clear text"),
    ({"EDGE_AGENT_SOURCE__BROKER_TLS": "true"}, "apply only to a separate broker"),
    ({"EDGE_AGENT_SOURCE__BROKER_HOST": "10.0.0.2", "EDGE_AGENT_SOURCE__BROKER_CA_FILE": "/etc/ca.crt"},
     "EDGE_AGENT_SOURCE__BROKER_CA_FILE is set but EDGE_AGENT_SOURCE__BROKER_TLS=false"),
    ({"EDGE_AGENT_SOURCE__BROKER_HOST": "10.0.0.2", "EDGE_AGENT_SOURCE__BROKER_TLS": "true",
      "EDGE_AGENT_SOURCE__BROKER_CERT_FILE": "/etc/c.crt"}, "mutual TLS needs both"),
])
def test_inconsistent_sensor_broker_settings_are_refused(env: dict[str, str], expected: str) -> None:
    base = {"EDGE_AGENT_SOURCE__KIND": "mqtt", "EDGE_AGENT_SOURCE__TOPICS": "a/#"}
    with pytest.raises(ConfigError) as e:
        load_settings(environ={**base, **env})
    assert any(expected in p for p in e.value.problems), e.value.problems


@pytest.mark.parametrize("env", [
    {"EDGE_AGENT_MQTT__TLS": "true", "EDGE_AGENT_MQTT__USERNAME": "gw"},  # the upstream itself: its TLS
    {"EDGE_AGENT_MQTT__TLS": "true", "EDGE_AGENT_MQTT__USERNAME": "gw", "EDGE_AGENT_SOURCE__BROKER_HOST": "10.0.0.2",
     "EDGE_AGENT_SOURCE__BROKER_USERNAME": "sensors"},  # a plain LAN broker with its own user
    {"EDGE_AGENT_MQTT__TLS": "true", "EDGE_AGENT_MQTT__USERNAME": "gw", "EDGE_AGENT_SOURCE__BROKER_HOST": "10.0.0.2",
     "EDGE_AGENT_SOURCE__BROKER_TLS": "true"},
    {"EDGE_AGENT_SOURCE__BROKER_HOST": "10.0.0.2"},  # all plain
])
def test_consistent_sensor_broker_settings_load(env: dict[str, str]) -> None:
    load_settings(environ={"EDGE_AGENT_SOURCE__KIND": "mqtt", "EDGE_AGENT_SOURCE__TOPICS": "a/#", **env})


# -- the generated example ---------------------------------------------------------------------------------------


def test_toml_example_is_up_to_date() -> None:
    assert EXAMPLE.read_text() == render_toml_example(), (
        "deploy/agent.toml.example is out of date; regenerate it: edge-agent config-reference --toml > deploy/agent.toml.example")


def _uncommented(text: str) -> str:
    """Every commented assignment before the Modbus example uncommented, except in the sections of the source
    kinds other than replay (one [source] table holds one kind)."""
    out, on = [], True
    for line in text.split("\n"):
        if line.startswith("## Modbus"):
            break
        if line.startswith("## kind = "):
            on = line.startswith('## kind = "replay"')
        elif line.startswith("["):
            on = True
        if on and re.match(r"#[a-z_]+ = ", line):
            line = line[1:]
        out.append(line)
    return "\n".join(out) + "\n"


def test_uncommenting_the_example_gives_the_defaults(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    text = _uncommented(render_toml_example())
    assert text.count("\n#") < 200 and "\nlog_level = " in text and "\nhost = " in text  # it did uncomment
    f.write_text(text)
    loaded = load_settings(environ={"EDGE_AGENT_CONFIG_FILE": str(f)}).model_dump()
    assert loaded.pop("config_file") == f
    defaults = Settings().model_dump()
    defaults.pop("config_file")
    assert loaded == defaults


def test_the_modbus_example_is_a_valid_configuration(tmp_path: Path) -> None:
    text = render_toml_example()
    example = "\n".join(line[1:] if re.match(r"#[A-Za-z_\"\[]", line) else line
                        for line in text[text.index("## Modbus"):].splitlines())
    f = tmp_path / "agent.toml"
    f.write_text('[source]\nkind = "modbus"\n' + example + "\n")
    s = load_settings(environ={"EDGE_AGENT_CONFIG_FILE": str(f)})
    assert list(s.modbus.devices["meter-1"].channels) == ["Voltage L1", "Current L1", "Total kWh", "Running", "Speed"]


def test_check_config_exits_78_naming_the_key(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text("[mqtt]\nport = 0\n")
    env = {"EDGE_AGENT_CONFIG_FILE": str(f), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "agent", "check-config"], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 78
    assert r.stderr.startswith(f"config error: mqtt.port = '0' ({f} line 2): Input should be greater than or equal to 1")
    f.write_text(MODBUS)
    r = subprocess.run([sys.executable, "-m", "agent", "check-config"], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "EDGE_AGENT_SOURCE__KIND=modbus" in r.stdout and "[modbus.devices.meter-1]" in r.stdout
    assert '"Voltage L1" = {table = "input", address = 0, type = "float32"' in r.stdout


@pytest.mark.parametrize("line", ["scale = nan", "offset = inf", "scale = -inf"])
def test_nan_and_inf_in_the_file_are_refused_like_in_the_environment(tmp_path: Path, line: str) -> None:
    """Issue 12 item 9: TOML writes nan and inf as literals; a NaN scale would make every reading not_finite."""
    text = MODBUS.replace('type = "float32"}', f'type = "float32", {line}}}')
    problems = _problems(tmp_path, text)
    assert any("finite number" in p for p in problems), problems
    got = _problems(tmp_path, "[cleaning]\nmax_hold_s = nan\n")
    assert any("max_hold_s" in p and "finite number" in p for p in got), got


@pytest.mark.parametrize("unit, why", [(0, "0 is broadcast: no device answers it"), (248, "248-255 are reserved"),
                                       (255, "248-255 are reserved")])
def test_an_rtu_unit_id_outside_1_to_247_exits_78_naming_key_value_and_rule(tmp_path: Path, unit: int, why: str) -> None:
    """Modbus over a serial line: unit 0 is a broadcast (written to, never answered), 248-255 are reserved."""
    f = tmp_path / "agent.toml"
    f.write_text(MODBUS.replace("unit = 3", f"unit = {unit}"))
    r = subprocess.run([sys.executable, "-m", "agent", "check-config"], capture_output=True, text=True, timeout=60,
                       env={"EDGE_AGENT_CONFIG_FILE": str(f), "PATH": "/usr/bin:/bin"}, cwd=ROOT)
    assert r.returncode == 78, r.stderr
    assert r.stderr.splitlines() == [f"config error: modbus.devices.meter-1.unit = {unit} ({f} line 11): on an rtu bus "
                                     f"(rs485-1) the unit id must be 1-247 ({why})"], r.stderr  # the key's line
    assert "Traceback" not in r.stderr


def test_two_devices_with_one_unit_id_on_a_bus_name_the_second_one_s_unit_and_its_line(tmp_path: Path) -> None:
    text = MODBUS + '\n[modbus.devices.meter-2]\nbus = "rs485-1"\nunit = 3\nchannels = {v = {address = 0}}\n'
    assert _problems(tmp_path, text) == [f"modbus.devices.meter-2.unit = 3 ({tmp_path / 'agent.toml'} line 17): devices "
                                         "meter-1 and meter-2 both have unit 3 on bus rs485-1"]


@pytest.mark.parametrize("unit", [1, 247])
def test_rtu_unit_ids_1_and_247_and_any_tcp_unit_id_are_accepted(tmp_path: Path, unit: int) -> None:
    s = _load(tmp_path, MODBUS.replace("unit = 3", f"unit = {unit}"))
    assert s.modbus.devices["meter-1"].unit == unit
    tcp = MODBUS.replace('kind = "rtu"\nport = "/dev/ttyUSB0"', 'kind = "tcp"\nhost = "127.0.0.1"')
    for tcp_unit in (0, 255):  # a TCP device answers any unit id; many use 0 or 255
        s = _load(tmp_path, tcp.replace("unit = 3", f"unit = {tcp_unit}"))
        assert s.modbus.devices["meter-1"].unit == tcp_unit
