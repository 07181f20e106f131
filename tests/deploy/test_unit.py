"""systemd/edge-agent.service: systemd-analyze verify is silent, security exposure <= 2.0, the contract keys."""

from __future__ import annotations

import configparser
import stat
from pathlib import Path

import pytest

from deploy_support import UNIT, security_score, verify_unit


@pytest.fixture
def stub_binary(tmp_path: Path) -> Path:
    binary = tmp_path / "opt" / "edge-agent" / "bin" / "edge-agent"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary


def _service_values() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    section = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}{key}", []).append(value)
    return values


def test_verify_prints_nothing(systemd_analyze: str, stub_binary: Path, tmp_path: Path) -> None:
    assert verify_unit(UNIT.read_text(), stub_binary, tmp_path / "unit") == ""


def test_verify_check_catches_a_typo(systemd_analyze: str, stub_binary: Path, tmp_path: Path) -> None:
    # verify exits 0 here: only its output reveals the mistake, which is why the check fails on any output.
    broken = UNIT.read_text().replace("NoNewPrivileges=", "NoNewPrivilege=")
    assert "Unknown key" in verify_unit(broken, stub_binary, tmp_path / "unit")


def test_verify_check_catches_a_missing_binary(systemd_analyze: str, tmp_path: Path) -> None:
    assert "not executable" in verify_unit(UNIT.read_text(), tmp_path / "missing", tmp_path / "unit")


def test_security_exposure_at_most_2(systemd_analyze: str) -> None:
    score, code, out = security_score(UNIT, threshold=2.0)
    assert score <= 2.0, out
    assert code == 0, out


def test_unit_contract() -> None:
    v = _service_values()
    one = {k: vals[-1] for k, vals in v.items()}
    assert one["[Service]Type"] == "notify"
    assert one["[Service]ExecStart"].startswith("/opt/edge-agent/bin/edge-agent run ")
    assert "--env-file /etc/edge-agent/agent.env" in one["[Service]ExecStart"]
    assert "[Service]EnvironmentFile" not in v  # the agent reads its env file itself
    assert float(one["[Service]WatchdogSec"].rstrip("s")) > 0
    assert one["[Service]Restart"] == "on-failure"
    assert one["[Service]RestartPreventExitStatus"] == "78"
    assert one["[Service]User"] == "edge-agent"
    assert one["[Service]SupplementaryGroups"] == "dialout"
    assert one["[Service]StateDirectory"] == "edge-agent"
    assert one["[Service]LoadCredential"] == "mqtt-password:/etc/edge-agent/credentials/mqtt-password"
    assert one["[Service]ProtectSystem"] == "strict"
    assert one["[Service]NoNewPrivileges"] == "yes"
    assert one["[Service]PrivateTmp"] == "yes"
    assert set(one["[Service]RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert one["[Service]DevicePolicy"] == "closed"
    allowed = {a.split()[0] for a in v["[Service]DeviceAllow"]}
    assert {"char-ttyUSB", "char-ttyACM"} <= allowed
    # Nothing writable outside the state directory.
    assert "[Service]ReadWritePaths" not in v
    assert "[Service]PrivateDevices" not in v  # would hide /dev/ttyUSB* and /dev/serial/by-id
    assert one["[Install]WantedBy"] == "multi-user.target"


def test_unit_parses_as_ini() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
