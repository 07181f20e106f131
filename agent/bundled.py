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


BUNDLED_MODELS = {"generic": "generic.json", "pump-anomaly": "pump-anomaly.tflite",
                  "machine-failure": "machine-failure.tflite"}
DEFAULT_MODEL = "generic"  # models/README.md: it beats pump-anomaly on faults it was not tuned on


def bundled_model(name: str) -> Path:
    """A bundled model's file by name (``generic``, ``pump-anomaly``, ``machine-failure``)."""
    return bundled_dir() / BUNDLED_MODELS[name]


def default_model_path() -> Path:
    """The default model when EDGE_AGENT_MODEL__PATH is empty: the generic detector."""
    return bundled_model(DEFAULT_MODEL)


def demo_recording_path() -> Path:
    """The bundled demo recording (SKAB valve1/1.csv, GPL-3.0, see LICENSE-SKAB beside it)."""
    return bundled_dir() / "demo" / "skab-valve1-1.csv"
