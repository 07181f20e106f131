"""Configuration: names, precedence, unknown keys, one line per problem, exit 78."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.settings import ConfigError, flat_env, known_env_names, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_documented_names_exist():
    names = set(known_env_names())
    for n in (
        "EDGE_AGENT_DEVICE_ID", "EDGE_AGENT_STATE_DIR", "EDGE_AGENT_SOURCE__KIND", "EDGE_AGENT_SOURCE__PATH",
        "EDGE_AGENT_SOURCE__SPEED", "EDGE_AGENT_MODEL__PATH", "EDGE_AGENT_MQTT__HOST", "EDGE_AGENT_MQTT__PORT",
        "EDGE_AGENT_MQTT__TOPIC_PREFIX", "EDGE_AGENT_LOG_LEVEL", "EDGE_AGENT_SUMMARY_INTERVAL_S",
        "EDGE_AGENT_DRAIN_TIMEOUT_S", "EDGE_AGENT_SOURCE__PORT", "EDGE_AGENT_SOURCE__TOPICS",
    ):
        assert n in names, n


def test_defaults_without_any_configuration(tmp_path):
    s = load_settings(None, {})
    assert s.source.kind == "replay" and s.source.path is None
    assert s.mqtt.host == "localhost" and s.mqtt.port == 1883 and s.mqtt.topic_prefix == "edge"
    assert s.drain_timeout_s == 10 and s.summary_interval_s == 300
    assert s.device_id  # the host name


def test_environment_overrides_env_file(tmp_path):
    f = tmp_path / "agent.env"
    f.write_text("EDGE_AGENT_MQTT__PORT=1884\nEDGE_AGENT_DEVICE_ID=from-file\nUNRELATED=1\n")
    s = load_settings(f, {"EDGE_AGENT_MQTT__PORT": "1999"})
    assert s.mqtt.port == 1999
    assert s.device_id == "from-file"


@pytest.mark.parametrize(
    "content, env, expected",
    [
        ("EDGE_AGENT_MQTT__HOTS=x\n", {}, ["EDGE_AGENT_MQTT__HOTS=x: unknown setting", "did you mean EDGE_AGENT_MQTT__HOST"]),
        ("", {"EDGE_AGENT_MQTT__PORT": "abc"}, ["EDGE_AGENT_MQTT__PORT='abc'", "valid integer"]),
        ("", {"EDGE_AGENT_MQTT__PORT": "70000"}, ["EDGE_AGENT_MQTT__PORT='70000'", "less than or equal to 65535"]),
        ("", {"EDGE_AGENT_SOURCE__SPEED": "-1"}, ["EDGE_AGENT_SOURCE__SPEED='-1'", "greater than or equal to 0"]),
        ("", {"EDGE_AGENT_SOURCE__KIND": "usb"}, ["EDGE_AGENT_SOURCE__KIND='usb'", "replay, serial, mqtt or modbus"]),
        ("", {"EDGE_AGENT_SOURCE__KIND": "serial"}, ["EDGE_AGENT_SOURCE__PORT=(not set)", "Field required"]),
        ("", {"EDGE_AGENT_LOG_LEVEL": "loud"}, ["EDGE_AGENT_LOG_LEVEL='loud'"]),
        ("", {"EDGE_AGENT_MQTT__TOPIC_PREFIX": "a/#"}, ["EDGE_AGENT_MQTT__TOPIC_PREFIX='a/#'", "must not contain"]),
        ("", {"EDGE_AGENT_CALIBRATION__TIMEZONE": "Europe/Berlinn"},
         ["EDGE_AGENT_CALIBRATION__TIMEZONE='Europe/Berlinn'", "unknown time zone", "an IANA name such as Europe/Berlin"]),
        ("", {"EDGE_AGENT_CALIBRATION__TIMEZONE": "Europe"},  # a folder of the time zone database
         ["EDGE_AGENT_CALIBRATION__TIMEZONE='Europe'", "unknown time zone"]),
        # refused by `run` only, naming no variable, while check-config said the configuration was fine
        ("", {"EDGE_AGENT_SOURCE__KIND": "mqtt", "EDGE_AGENT_SOURCE__TOPICS": "plant/#/x"},
         ["EDGE_AGENT_SOURCE__TOPICS='plant/#/x'", "'#' must be a whole level"]),
        ("", {"EDGE_AGENT_SOURCE__KIND": "mqtt", "EDGE_AGENT_SOURCE__TOPICS": "plant/+/t,plant/p+"},
         ["EDGE_AGENT_SOURCE__TOPICS='plant/+/t,plant/p+'", "'+' must be a whole level"]),
        ("", {"EDGE_AGENT_SOURCE__KIND": "mqtt", "EDGE_AGENT_SOURCE__TOPICS": "plant/+/t",
              "EDGE_AGENT_SOURCE__SENSOR_PATTERN": "plant/t"},
         ["EDGE_AGENT_SOURCE__SENSOR_PATTERN='plant/t'", "must contain {sensor} exactly once"]),
    ],
)
def test_problems_name_variable_value_and_rule(tmp_path, content, env, expected):
    f = tmp_path / "agent.env"
    f.write_text(content)
    with pytest.raises(ConfigError) as e:
        load_settings(f, env)
    text = str(e.value)
    for piece in expected:
        assert piece in text


def test_every_problem_is_reported_at_once(tmp_path):
    f = tmp_path / "agent.env"
    f.write_text("EDGE_AGENT_BOGUS=1\nEDGE_AGENT_MQTT__PORT=x\n")
    with pytest.raises(ConfigError) as e:
        load_settings(f, {"EDGE_AGENT_SOURCE__SPEED": "-2"})
    assert len(e.value.problems) == 3


def test_secrets_are_masked(tmp_path):
    s = load_settings(None, {"EDGE_AGENT_MQTT__PASSWORD": "hunter2"})
    assert s.mqtt.password.get_secret_value() == "hunter2"
    flat = flat_env(s)
    assert flat["EDGE_AGENT_MQTT__PASSWORD"] == "***"
    assert "hunter2" not in str(flat)


def test_comma_separated_lists():
    s = load_settings(None, {"EDGE_AGENT_SOURCE__KIND": "mqtt", "EDGE_AGENT_SOURCE__TOPICS": "a/+/b, c/#"})
    assert s.source.topics == ["a/+/b", "c/#"]


def _cli(*args, env=None):
    import os

    e = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, env=e, cwd=ROOT, timeout=60)


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_bad_config_exits_78_naming_the_variable(tmp_path, command):
    f = tmp_path / "agent.env"
    f.write_text("EDGE_AGENT_MQTT__PORT=notaport\nEDGE_AGENT_SOURCE__SPED=3\n")
    r = _cli(command, "--env-file", str(f))
    assert r.returncode == 78, r.stderr
    assert "EDGE_AGENT_MQTT__PORT='notaport'" in r.stderr
    assert "EDGE_AGENT_SOURCE__SPED=3: unknown setting" in r.stderr


def test_check_config_prints_effective_configuration(tmp_path):
    r = _cli("check-config", env={"EDGE_AGENT_MQTT__HOST": "broker.example", "EDGE_AGENT_MQTT__PASSWORD": "s3cret"})
    assert r.returncode == 0, r.stderr
    assert "EDGE_AGENT_MQTT__HOST=broker.example" in r.stdout
    assert "s3cret" not in r.stdout + r.stderr


def test_missing_env_file_is_a_config_error(tmp_path):
    r = _cli("check-config", "--env-file", str(tmp_path / "nope.env"))
    assert r.returncode == 78
    assert "nope.env" in r.stderr


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["check-config", "--help"], ["version", "--help"]])
def test_help(args):
    r = _cli(*args)
    assert r.returncode == 0 and "usage: edge-agent" in r.stdout


def test_version_from_module_and_script():
    from agent import __version__

    r = _cli("version")
    assert r.stdout.strip() == f"edge-agent {__version__}"


# -- issue 12 item 9: every number validated where it enters ----------------------------------------------------


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"EDGE_AGENT_MODEL__THRESHOLD": "nan"}, "EDGE_AGENT_MODEL__THRESHOLD='nan': Input should be a finite number"),
        ({"EDGE_AGENT_MODEL__THRESHOLD": "-1"}, "EDGE_AGENT_MODEL__THRESHOLD='-1': Input should be greater than 0"),
        ({"EDGE_AGENT_DRAIN_TIMEOUT_S": "inf"}, "EDGE_AGENT_DRAIN_TIMEOUT_S='inf': Input should be a finite number"),
        ({"EDGE_AGENT_SUMMARY_INTERVAL_S": "Infinity"}, "EDGE_AGENT_SUMMARY_INTERVAL_S='Infinity'"),
        ({"EDGE_AGENT_CLEANING__MAX_HOLD_S": "NaN"}, "EDGE_AGENT_CLEANING__MAX_HOLD_S='NaN'"),
        ({"EDGE_AGENT_ALERTS__CRITICAL_MARGIN": "inf"}, "EDGE_AGENT_ALERTS__CRITICAL_MARGIN='inf'"),
        ({"EDGE_AGENT_COMMANDS__THRESHOLD_MAX": "inf"}, "EDGE_AGENT_COMMANDS__THRESHOLD_MAX='inf'"),
        ({"EDGE_AGENT_DECISION__K": "6", "EDGE_AGENT_DECISION__N": "5"},
         "EDGE_AGENT_DECISION__N='5': Value error, must be at least k (6, EDGE_AGENT_DECISION__K or decision.k in the file)"),
        ({"EDGE_AGENT_COMMANDS__ALLOW": "ping,reboot"}, "unknown command(s) reboot"),
        ({"EDGE_AGENT_COMMANDS__MODEL_DIRS": "models"}, "must be absolute paths: models"),
    ],
)
def test_numbers_and_lists_are_refused_where_they_enter(env, expected):
    with pytest.raises(ConfigError) as e:
        load_settings(None, env)
    assert expected in str(e.value)


def test_every_float_setting_refuses_nan():
    """The rule is one mechanism (allow_inf_nan=False on every section), not a list: every float field refuses NaN."""
    from agent.settings import Settings, _walk

    floats = [env for env, f in _walk(Settings, "EDGE_AGENT_") if f.annotation in (float, float | None)]
    assert len(floats) >= 15
    for env in floats:
        extra = {"EDGE_AGENT_SOURCE__KIND": "serial", "EDGE_AGENT_SOURCE__PORT": "/dev/null"} if "SOURCE__" in env else {}
        with pytest.raises(ConfigError) as e:
            load_settings(None, {**extra, env: "nan"})
        assert env in str(e.value), env


def test_check_config_holds_k_against_the_models_n_and_exits_78_naming_the_variable():
    r = _cli("check-config", env={"EDGE_AGENT_DECISION__K": "6"})
    assert r.returncode == 78, r.stdout
    assert "EDGE_AGENT_DECISION__K=6: must not exceed n (5, the model sidecar decision.n)" in r.stderr
    r = _cli("check-config", env={"EDGE_AGENT_CALIBRATION__SAMPLES": "12"})
    assert r.returncode == 78 and "EDGE_AGENT_CALIBRATION__SAMPLES=12" in r.stderr
    assert _cli("check-config", env={"EDGE_AGENT_DECISION__K": "5"}).returncode == 0


def test_run_refuses_k_over_n_before_starting(tmp_path):
    r = _cli("run", env={"EDGE_AGENT_DECISION__K": "6", "EDGE_AGENT_STATE_DIR": str(tmp_path)})
    assert r.returncode == 78 and "EDGE_AGENT_DECISION__K=6" in r.stderr


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_missing_replay_recording_is_exit_78_naming_the_variable(tmp_path, command):
    """check-config must refuse what run refuses (the deploy checks a file with it before the restart), and both
    name the variable."""
    for bad in (tmp_path / "nope.csv", tmp_path):  # missing, and a directory
        r = _cli(command, env={"EDGE_AGENT_SOURCE__PATH": str(bad), "EDGE_AGENT_STATE_DIR": str(tmp_path / "s"),
                               "EDGE_AGENT_MQTT__PORT": "1", "EDGE_AGENT_DRAIN_TIMEOUT_S": "0"})
        assert r.returncode == 78, r.stderr
        assert f"EDGE_AGENT_SOURCE__PATH={bad}: no such file" in r.stderr, r.stderr


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_model_run_would_refuse_is_exit_78_in_check_config_too_naming_the_variable(tmp_path, command):
    """A sidecar without its .tflite beside it, or with another file's hash, passed check-config (exit 0) and was
    refused by run only; a mistyped bundled name was said to lack a sidecar."""
    side = tmp_path / "x.json"
    side.write_text((Path(__file__).resolve().parents[2] / "models" / "pump-anomaly.json").read_text())
    garbage = tmp_path / "y.tflite"
    garbage.write_bytes(b"not a model" * 10)
    (tmp_path / "y.json").write_text(side.read_text())
    cases = {str(tmp_path / "x.tflite"): "x.tflite: no such file",
             str(garbage): "y.tflite's sha256 ",
             "pump_anomaly": "pump_anomaly: no bundled model of that name (generic, pump-anomaly, machine-failure)"}
    for path, expected in cases.items():
        r = _cli(command, env={"EDGE_AGENT_MODEL__PATH": path, "EDGE_AGENT_STATE_DIR": str(tmp_path / "s"),
                               "EDGE_AGENT_MQTT__PORT": "1", "EDGE_AGENT_DRAIN_TIMEOUT_S": "0"})
        assert r.returncode == 78, r.stderr
        assert f"EDGE_AGENT_MODEL__PATH={path}: " in r.stderr and expected in r.stderr, r.stderr


def test_a_line_that_is_not_name_value_hides_none_of_the_other_problems(tmp_path):
    f = tmp_path / "agent.env"
    f.write_text("garbage line\nEDGE_AGENT_MQTT__KEEPALIVE_S=-5\nEDGE_AGENT_MQTT__HOTS=x\n")
    r = _cli("check-config", "--env-file", str(f))
    assert r.returncode == 78, r.stderr
    assert f"{f} line 1: not NAME=value" in r.stderr and "EDGE_AGENT_MQTT__KEEPALIVE_S='-5'" in r.stderr, r.stderr
    assert "EDGE_AGENT_MQTT__HOTS=x: unknown setting" in r.stderr, r.stderr


# -- issue 12 item 12: password files and unknown variables in the environment -----------------------------------


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_missing_mqtt_password_file_is_exit_78_naming_the_variable(tmp_path, command):
    missing = tmp_path / "nope"
    r = _cli(command, env={"EDGE_AGENT_MQTT__PASSWORD_FILE": str(missing), "EDGE_AGENT_MQTT__USERNAME": "gw",
                           "EDGE_AGENT_STATE_DIR": str(tmp_path / "s")})
    assert r.returncode == 78, r.stderr
    assert f"EDGE_AGENT_MQTT__PASSWORD_FILE={missing}: no such file" in r.stderr
    # the sensor broker's agrees
    r = _cli(command, env={"EDGE_AGENT_SOURCE__KIND": "mqtt", "EDGE_AGENT_SOURCE__TOPICS": "a/#",
                           "EDGE_AGENT_SOURCE__BROKER_PASSWORD_FILE": str(missing), "EDGE_AGENT_STATE_DIR": str(tmp_path / "s")})
    assert r.returncode == 78 and f"EDGE_AGENT_SOURCE__BROKER_PASSWORD_FILE={missing}: no such file" in r.stderr


def test_a_password_file_readable_by_others_is_warned_about(tmp_path):
    f = tmp_path / "pw"
    f.write_text("s3cret\n")
    f.chmod(0o644)
    r = _cli("check-config", env={"EDGE_AGENT_MQTT__PASSWORD_FILE": str(f)})
    assert r.returncode == 0, r.stderr
    assert f"config warning: EDGE_AGENT_MQTT__PASSWORD_FILE={f} is readable by group and others (mode 0644)" in r.stderr
    assert "s3cret" not in r.stderr + r.stdout
    f.chmod(0o600)
    assert "readable by" not in _cli("check-config", env={"EDGE_AGENT_MQTT__PASSWORD_FILE": str(f)}).stderr


def test_unknown_variables_in_the_environment_are_warned_about_with_a_hint():
    r = _cli("check-config", env={"EDGE_AGENT_MQTT__HOTS": "x", "EDGE_AGENT_MQTT__HOST": "broker"})
    assert r.returncode == 0, r.stderr
    assert ("config warning: EDGE_AGENT_MQTT__HOTS in the environment is not a setting (ignored); "
            "did you mean EDGE_AGENT_MQTT__HOST?") in r.stderr


# -- the k-of-n debounce is bounded: n windows' verdicts are kept per sensor ---------------------------------------


@pytest.mark.parametrize("env, expected", [
    ({"EDGE_AGENT_DECISION__K": "10001"}, "EDGE_AGENT_DECISION__K='10001': Input should be less than or equal to 10000"),
    ({"EDGE_AGENT_DECISION__N": "1000000"},
     "EDGE_AGENT_DECISION__N='1000000': Input should be less than or equal to 10000"),
])
def test_k_and_n_over_10000_exit_78_naming_variable_value_and_rule(tmp_path, env, expected):
    r = _cli("check-config", env={**env, "EDGE_AGENT_STATE_DIR": str(tmp_path)})
    assert r.returncode == 78, r.stderr
    assert expected in r.stderr
    assert "Traceback" not in r.stderr


def test_k_and_n_of_10000_are_accepted_and_the_limit_holds_in_the_file_and_for_an_asset(tmp_path):
    s = load_settings(None, {"EDGE_AGENT_DECISION__K": "10000", "EDGE_AGENT_DECISION__N": "10000"})
    assert (s.decision.k, s.decision.n) == (10000, 10000)
    f = tmp_path / "agent.toml"
    f.write_text('[decision]\nn = 20000\n')
    with pytest.raises(ConfigError) as e:
        load_settings(None, {"EDGE_AGENT_CONFIG_FILE": str(f)})
    assert any("decision.n" in p and "20000" in p and "less than or equal to 10000" in p for p in e.value.problems)
    f.write_text('[[assets]]\nid = "a"\nsource = {kind = "replay"}\ndecision = {k = 20000}\n')
    with pytest.raises(ConfigError) as e:
        load_settings(None, {"EDGE_AGENT_CONFIG_FILE": str(f)})
    assert any("decision.k" in p and "20000" in p and "less than or equal to 10000" in p
               for p in e.value.problems), e.value.problems


# -- an env file line that is not NAME=value is an error, not skipped in silence ----------------------------------


@pytest.mark.parametrize("bad", ["EDGE_AGENT_MQTT__HOST broker", "EDGE_AGENT_MQTT__HOST", "=1884",
                                 "EDGE_AGENT_MQTT__PASSWORD='unterminated"])
def test_an_env_file_line_that_is_not_name_value_exits_78_naming_file_line_and_rule(tmp_path, bad):
    f = tmp_path / "agent.env"
    f.write_text(f"# the gateway\nEDGE_AGENT_MQTT__PORT=1884\n\n  \n{bad}\nEDGE_AGENT_DEVICE_ID=gw\n")
    with pytest.raises(ConfigError) as e:
        load_settings(f, {})
    assert e.value.problems == [f"{f} line 5: not NAME=value (each line must be NAME=value, a # comment or blank)"]
    r = _cli("check-config", "--env-file", str(f))
    assert r.returncode == 78, r.stderr
    assert f"config error: {f} line 5: not NAME=value" in r.stderr and "Traceback" not in r.stderr
    assert "unterminated" not in r.stderr  # the line's text is not shown: it may hold a secret


def test_comments_blank_lines_and_quoted_values_in_an_env_file_are_fine(tmp_path):
    f = tmp_path / "agent.env"
    f.write_text("# comment\n\nEDGE_AGENT_DEVICE_ID='gw 1'\n   \nEDGE_AGENT_MQTT__PORT=1884 # inline\n")
    s = load_settings(f, {})
    assert (s.device_id, s.mqtt.port) == ("gw 1", 1884)


# -- an env file that is not a readable regular file: one line with the reason, not "no such file" ----------------


def _env_file_not_a_file(tmp_path: Path, kind: str) -> Path:
    import os

    if kind == "directory":
        return tmp_path
    f = tmp_path / "agent.fifo"
    os.mkfifo(f)  # read twice by the env file reader: it would hang on a pipe with no writer
    return f


@pytest.mark.parametrize("kind, reason", [("directory", "is a directory, not an env file"),
                                          ("fifo", "not a regular file (a pipe, socket or device)")])
def test_an_env_file_that_is_a_directory_or_a_pipe_exits_78_with_one_line_naming_it_and_the_reason(tmp_path, kind,
                                                                                                   reason):
    path = _env_file_not_a_file(tmp_path, kind)
    r = _cli("check-config", "--env-file", str(path))
    assert r.returncode == 78, r.stderr
    assert r.stderr.strip().splitlines() == [f"config error: --env-file {path}: {reason}"], r.stderr
    assert "no such file" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("where", ["file", "directory"])
def test_an_env_file_it_may_not_read_is_one_problem_naming_it_and_the_reason(where):
    """Permission denied for real: as root (CI) a forked child drops to uid/gid 65534 (nobody) to load it; the file
    itself, or the directory it is in, may not be read (that one was a PermissionError traceback)."""
    import os
    import tempfile

    from dotenv.parser import parse_stream  # noqa: F401 - imported before the child drops its rights

    with tempfile.TemporaryDirectory() as d:  # not under pytest's tmp_path: that is root's only
        os.chmod(d, 0o755)
        f = Path(d) / "conf" / "agent.env"
        f.parent.mkdir()
        f.write_text("EDGE_AGENT_DEVICE_ID=gw\n")
        (f if where == "file" else f.parent).chmod(0)
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: load as nobody, report the problems (or the exception) through the pipe
            try:
                os.close(rfd)
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                try:
                    load_settings(f, {})
                    out = "loaded"
                except ConfigError as e:
                    out = "\n".join(e.problems)
                except BaseException as e:  # noqa: BLE001 - what the parent asserts against
                    out = f"raised {e!r}"
                os.write(wfd, out.encode())
            finally:
                os._exit(0)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            got = r.read().decode()
        os.waitpid(pid, 0)
        f.parent.chmod(0o755)
    assert got == f"--env-file {f}: cannot read (Permission denied)"


def test_output_into_a_closed_pipe_is_no_traceback():
    """`edge-agent model info generic | head -1` printed a BrokenPipeError traceback."""
    import os

    read, write = os.pipe()
    os.close(read)  # the reader has gone before the first line
    try:
        r = subprocess.run([sys.executable, "-m", "agent", "model", "info", "generic"], cwd=ROOT, stdout=write,
                           stderr=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=120)
    finally:
        os.close(write)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 141


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_recording_run_refuses_for_its_header_is_refused_by_check_config_too(tmp_path, command):
    """A header without a time column or with a column twice: run exited 78 naming only the file, while
    check-config said the configuration was fine (exit 0)."""
    for header, rule in (("a;b;c", "no time column"), ("ts,a,a", "column 'a' appears twice")):
        rec = tmp_path / "rec.csv"
        rec.write_text(f"{header}\n1,2,3\n")
        r = _cli(command, env={"EDGE_AGENT_SOURCE__PATH": str(rec), "EDGE_AGENT_STATE_DIR": str(tmp_path / "s")})
        assert r.returncode == 78, r.stderr
        assert f"EDGE_AGENT_SOURCE__PATH={rec}: " in r.stderr and rule in r.stderr, r.stderr


def test_the_teach_in_log_line_writes_a_duration_as_it_is_set():
    """EDGE_AGENT_CALIBRATION__DURATION=7d was logged as '604800 s of data'."""
    from agent.parse import duration_text as _span

    assert [_span(s) for s in (604_800, 86_400, 5_400, 90, 45, 1.5)] == ["7d", "1d", "90m", "90s", "45s", "1.5s"]


def test_an_assets_model_file_refused_keeps_its_settings_checked_and_a_huge_file_is_not_read(tmp_path):
    """An asset whose .tflite is another file (its hash) is down and the others run (a warning), but its decision
    settings against the sidecar are still a problem: the early return of the model file's check skipped them, and
    the gateway then exited 78 at the restart after the file was fixed. A model file over 64 MiB is refused by its
    size, not read whole (a sparse file here)."""
    side = (Path(__file__).resolve().parents[2] / "models" / "pump-anomaly.json").read_text()
    (tmp_path / "y.json").write_text(side)
    (tmp_path / "y.tflite").write_bytes(b"another file")
    (tmp_path / "big.json").write_text(side)
    with open(tmp_path / "big.tflite", "wb") as f:
        f.truncate(65 * 2**20)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
[[assets]]
id = "good"
source = {{ kind = "replay" }}

[[assets]]
id = "bad"
source = {{ kind = "replay" }}
model = {{ path = "{tmp_path / 'y.tflite'}" }}
decision = {{ k = 9 }}
""")
    r = _cli("check-config", env={"EDGE_AGENT_CONFIG_FILE": str(cfg), "EDGE_AGENT_STATE_DIR": str(tmp_path / "s")})
    assert r.returncode == 78, r.stderr
    assert "assets[1] (bad).decision.k=9: must not exceed n" in r.stderr, r.stderr
    cfg.write_text(cfg.read_text().replace("decision = { k = 9 }", ""))
    r = _cli("check-config", env={"EDGE_AGENT_CONFIG_FILE": str(cfg), "EDGE_AGENT_STATE_DIR": str(tmp_path / "s")})
    assert r.returncode == 0, r.stderr  # the model file alone: that asset down, the others run
    assert "y.tflite's sha256" in r.stderr and "asset bad will be down" in r.stderr, r.stderr
    r = _cli("check-config", env={"EDGE_AGENT_MODEL__PATH": str(tmp_path / "big.tflite"),
                                  "EDGE_AGENT_STATE_DIR": str(tmp_path / "s")})
    assert r.returncode == 78 and "more than the 64 MiB a model may have" in r.stderr, r.stderr


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_an_unknown_serial_url_scheme_is_exit_78_in_check_config_too_naming_the_variable(tmp_path, command):
    """run refused it (the source is built at start) with pyserial's words only; check-config passed it."""
    r = _cli(command, env={"EDGE_AGENT_SOURCE__KIND": "serial", "EDGE_AGENT_SOURCE__PORT": "foo://bar",
                           "EDGE_AGENT_STATE_DIR": str(tmp_path / "s"), "EDGE_AGENT_MQTT__PORT": "1"})
    assert r.returncode == 78, r.stderr
    assert "EDGE_AGENT_SOURCE__PORT=foo://bar: invalid URL, protocol 'foo' not known" in r.stderr, r.stderr


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_model_path_that_is_a_pipe_is_refused_not_read(tmp_path, command):
    """A FIFO named like a model beside a valid sidecar: reading it would block for ever."""
    import os

    (tmp_path / "p.json").write_text((Path(__file__).resolve().parents[2] / "models" / "pump-anomaly.json").read_text())
    os.mkfifo(tmp_path / "p.tflite")
    r = _cli(command, env={"EDGE_AGENT_MODEL__PATH": str(tmp_path / "p.tflite"), "EDGE_AGENT_STATE_DIR": str(tmp_path / "s"),
                           "EDGE_AGENT_MQTT__PORT": "1"})
    assert r.returncode == 78 and f"{tmp_path / 'p.tflite'}: not a regular file" in r.stderr, r.stderr
