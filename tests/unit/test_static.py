"""The static checks that keep the code as the design note asks: ``agent/`` is mypy-clean (configuration:
``[tool.mypy]`` in pyproject.toml, with the pydantic plugin) and ruff finds no error-class lint (syntax, undefined
or unused names, imports, statements) in the code and its tests, benchmarks and model scripts.

Both tools come with the ``test`` extra (``pip install -e '.[test]'``, what CI installs): a missing one fails the
test, it is never skipped. Neither writes into the repository: mypy's cache goes to a temporary directory, ruff runs
without its cache."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUFF_SELECT = "E4,E7,E9,F"
RUFF_PATHS = ("agent", "tests", "bench", "models")
TIMEOUT_S = 600


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(tool) is None:
        pytest.fail(f"{tool} is not installed in {sys.executable}: install the test extra, "
                    f"pip install -e '.[test]' (it brings mypy and ruff)", pytrace=False)
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)


def _report(proc: subprocess.CompletedProcess[str]) -> str:
    return f"{' '.join(proc.args[2:])} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"


def test_agent_is_mypy_clean(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = tmp_path_factory.mktemp("mypy-cache")
    proc = _run("mypy", "agent", "--cache-dir", str(cache))
    rc = proc.returncode
    assert rc == 0, _report(proc)


def test_ruff_finds_no_errors() -> None:
    proc = _run("ruff", "check", "--no-cache", "--select", RUFF_SELECT, *RUFF_PATHS)
    rc = proc.returncode
    assert rc == 0, _report(proc)
