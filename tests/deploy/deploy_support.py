"""Helpers for the deployment tests: the repository paths and systemd-analyze runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "edge-agent.service"
INSTALL_SH = REPO / "deploy" / "install.sh"
EXEC_PATH = "/opt/edge-agent/bin/edge-agent"


def verify_unit(unit_text: str, binary: Path, workdir: Path) -> str:
    """``systemd-analyze verify`` output for a copy of the unit whose ExecStart points at ``binary``.

    verify needs ExecStart's binary to exist and exits 0 on unknown keys and bad values, printing only
    warnings, so the output is what counts: empty means clean.
    """
    assert EXEC_PATH in unit_text
    workdir.mkdir(parents=True, exist_ok=True)
    copy = workdir / "edge-agent.service"
    copy.write_text(unit_text.replace(f"ExecStart={EXEC_PATH}", f"ExecStart={binary}"))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    return (proc.stdout + proc.stderr).strip() + ("" if proc.returncode == 0 else f"\n(exit {proc.returncode})")


def security_score(unit: Path, threshold: float = 2.0) -> tuple[float, int, str]:
    """(exposure, exit code, output) of ``systemd-analyze security --offline=true``.

    systemd 252 takes --threshold as an integer in tenths of the printed exposure (``--threshold=2.0`` is
    rejected, ``--threshold=2`` means 0.2): exposure 2.0 is ``--threshold=20``.
    """
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--threshold={round(threshold * 10)}", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60,
    )
    out = proc.stdout + proc.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert m, out
    return float(m.group(1)), proc.returncode, out
