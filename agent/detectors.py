"""Opening a model by bundled name or path: a TFLite model (``.tflite`` + sidecar) or a generic detector spec.

``EDGE_AGENT_MODEL__PATH`` takes a bundled name (``generic``, ``pump-anomaly``, ``machine-failure``), a ``.tflite``
file with its JSON sidecar beside it, or a generic detector's JSON spec (a copy of ``models/generic.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

from agent.bundled import BUNDLED_MODELS, bundled_model
from agent.generic import GenericModel, GenericSpec
from agent.infer import Model, ModelError, Sidecar, read_sidecar

def resolve(path: str | Path) -> Path:
    """A bundled name → its file; anything else is a path."""
    text = str(path)
    if text in BUNDLED_MODELS and not Path(text).exists():
        return bundled_model(text)
    return Path(path)


def missing(path: Path, given: str | Path) -> ModelError | None:
    """Why ``path`` (``given`` resolved) cannot be a model when it does not exist: a name that is no bundled
    model's, or no such file; None when it exists."""
    try:
        path.stat()
        return None
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError:  # there but not to be looked at (a directory on the way the agent may not enter): read says why
        return None
    text = str(given)
    if "/" not in text and not Path(text).suffix:  # a name, not a path
        return ModelError(f"{text}: no bundled model of that name ({', '.join(BUNDLED_MODELS)}) and no such file")
    return ModelError(f"{path}: no such file")


def is_generic_spec(path: Path) -> bool:
    """True for a JSON file whose ``kind`` is ``generic``."""
    if path.suffix.lower() != ".json":
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("kind") == "generic"
    except (OSError, ValueError, AttributeError):
        return False


def open_model(path: str | Path, runtime: str = "auto", num_threads: int = 1) -> Model | GenericModel:
    """Load and check a model; ModelError with the reason when it is refused."""
    p = resolve(path)
    gone = missing(p, path)
    if gone is not None:
        raise gone
    if p.suffix.lower() == ".json":
        if not is_generic_spec(p):
            raise ModelError(f"{p}: a JSON file here must be a generic detector spec (kind \"generic\"); "
                             f"for a TFLite model give the .tflite file (its sidecar is found beside it)")
        return GenericModel.load(p)
    return Model(p, runtime=runtime, num_threads=num_threads)


def read_spec(path: Path, given: str | Path | None = None) -> Sidecar | GenericSpec:
    """The validated sidecar (TFLite) or spec (generic) of ``path`` (``given``: as configured, before ``resolve``),
    without loading a runtime; ModelError."""
    gone = missing(path, path if given is None else given)
    if gone is not None:
        raise gone
    if path.suffix.lower() == ".json":
        if not is_generic_spec(path):
            raise ModelError(f"{path}: a JSON file here must be a generic detector spec (kind \"generic\")")
        return GenericModel.load(path).sidecar
    return read_sidecar(path)
