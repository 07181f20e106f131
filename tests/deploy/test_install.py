"""deploy/install.sh in staging mode (--root DIR): layout, modes, idempotence, uninstall and purge.

These runs pass --no-deps for speed (the venv gets only the agent package); .ci/check-deploy does a full
staging install with every dependency from the package index and runs the installed binary.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy_support import INSTALL_SH, REPO, UNIT, verify_unit


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def install(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["bash", str(INSTALL_SH), *args], capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent wheel, built once from this checkout (or $EDGE_AGENT_TEST_WHEEL when set)."""
    given = os.environ.get("EDGE_AGENT_TEST_WHEEL")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"cannot build the agent wheel:\n{proc.stdout}{proc.stderr}"
    (built,) = out.glob("edge_agent-*.whl")
    return built


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("stage")
    proc = install("--root", str(root), "--pip-args", "--no-deps", str(wheel))
    yield root, proc.stdout + proc.stderr


def test_layout(staged: tuple[Path, str], wheel: Path) -> None:
    root, _ = staged
    venv = root / "opt" / "edge-agent"
    assert os.access(venv / "bin" / "python", os.X_OK)
    assert os.access(venv / "bin" / "edge-agent", os.X_OK)
    assert (venv / "dist" / wheel.name).is_file()
    unit = root / "etc" / "systemd" / "system" / "edge-agent.service"
    assert unit.read_text() == UNIT.read_text()
    assert _mode(unit) == 0o644
    etc = root / "etc" / "edge-agent"
    assert _mode(etc) == 0o750
    assert (etc / "agent.env").read_text() == (REPO / "deploy" / "agent.env.example").read_text()
    assert _mode(etc / "agent.env") == 0o640
    assert _mode(etc / "agent.env.example") == 0o644
    assert _mode(etc / "credentials") == 0o700
    assert (etc / "credentials" / "mqtt-password").read_bytes() == b""
    assert _mode(etc / "credentials" / "mqtt-password") == 0o600
    # Nothing outside the staging root's opt/ and etc/.
    assert sorted(p.name for p in root.iterdir()) == ["etc", "opt"]


def test_privileged_steps_are_only_printed(staged: tuple[Path, str]) -> None:
    _, out = staged
    assert "would run: useradd --system --user-group --groups dialout" in out
    assert "would run: chown root:edge-agent" in out
    assert "would run: systemctl daemon-reload" in out
    assert "would run: systemctl enable --now edge-agent.service" in out


def test_installed_package_matches_the_checkout(staged: tuple[Path, str]) -> None:
    root, _ = staged
    python = root / "opt" / "edge-agent" / "bin" / "python"
    version = subprocess.run([str(python), "-c", "import agent; print(agent.__version__)"], capture_output=True, text=True)
    namespace: dict[str, str] = {}
    exec((REPO / "agent" / "__init__.py").read_text(), namespace)
    assert version.stdout.strip() == namespace["__version__"]


def test_installed_unit_verifies(staged: tuple[Path, str], systemd_analyze: str, tmp_path: Path) -> None:
    root, _ = staged
    unit = root / "etc" / "systemd" / "system" / "edge-agent.service"
    binary = root / "opt" / "edge-agent" / "bin" / "edge-agent"
    assert verify_unit(unit.read_text(), binary, tmp_path) == ""


def test_rerun_keeps_config_and_restores_the_unit(tmp_path: Path, wheel: Path) -> None:
    install("--root", str(tmp_path), "--pip-args", "--no-deps", str(wheel))
    env = tmp_path / "etc" / "edge-agent" / "agent.env"
    env.write_text("EDGE_AGENT_LOG_LEVEL=DEBUG\n")
    password = tmp_path / "etc" / "edge-agent" / "credentials" / "mqtt-password"
    password.write_text("s3cret")
    unit = tmp_path / "etc" / "systemd" / "system" / "edge-agent.service"
    unit.write_text("[Service]\nExecStart=/bin/false\n")
    out = install("--root", str(tmp_path), "--pip-args", "--no-deps", str(wheel)).stdout
    assert "kept existing" in out
    assert "creating virtualenv" not in out  # the venv is reused
    assert env.read_text() == "EDGE_AGENT_LOG_LEVEL=DEBUG\n"
    assert password.read_text() == "s3cret"
    assert unit.read_text() == UNIT.read_text()


def test_uninstall_keeps_config_and_state_purge_removes_them(tmp_path: Path, wheel: Path) -> None:
    install("--root", str(tmp_path), "--pip-args", "--no-deps", str(wheel))
    state = tmp_path / "var" / "lib" / "edge-agent"
    state.mkdir(parents=True)
    (state / "outbox.sqlite").write_text("")
    out = install("--root", str(tmp_path), "--uninstall").stdout
    assert not (tmp_path / "opt" / "edge-agent").exists()
    assert not (tmp_path / "etc" / "systemd" / "system" / "edge-agent.service").exists()
    assert (tmp_path / "etc" / "edge-agent" / "agent.env").is_file()
    assert (state / "outbox.sqlite").is_file()
    assert "would run: systemctl disable --now edge-agent.service" in out
    out = install("--root", str(tmp_path), "--uninstall", "--purge").stdout
    assert not (tmp_path / "etc" / "edge-agent").exists()
    assert not state.exists()
    assert "would run: userdel edge-agent" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--purge"], "--purge only goes with --uninstall"),
        (["--bogus"], "unknown option --bogus"),
        (["/nonexistent/edge_agent-1.0-py3-none-any.whl"], "no such wheel or directory"),
        (["/etc/hostname"], "is not a wheel"),
        (["--root"], "--root needs a directory"),
    ],
)
def test_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    proc = install("--root", str(tmp_path / "r"), *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_help() -> None:
    out = install("--help").stdout
    assert "--root DIR" in out and "--uninstall" in out
