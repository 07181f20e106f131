"""Where the bundled models and demo recording are: inside the wheel, or in the checkout's models/."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def bundled_dir() -> Path:
    """``agent/_bundled`` in an installed wheel; the repository's ``models/`` in a checkout or editable install."""
    inside = _PKG / "_bundled"
    if inside.is_dir():
        return inside
    return _PKG.parent / "models"


def default_model_path() -> Path:
    """The bundled pump-anomaly model (the default when EDGE_AGENT_MODEL__PATH is empty)."""
    return bundled_dir() / "pump-anomaly.tflite"


def demo_recording_path() -> Path:
    """The bundled demo recording (SKAB valve1/1.csv, GPL-3.0, see LICENSE-SKAB beside it)."""
    return bundled_dir() / "demo" / "skab-valve1-1.csv"
