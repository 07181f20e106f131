"""The model sidecar contract (models/README.md): its pydantic models, the limits it is checked against, and
reading it. Split from agent.infer, which re-exports every name here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.advice import AdviceSpec, check_advice
from agent.derive import DerivedSpec, check_derived
from agent.settings_sections import MAX_K_OF_N
from agent.window import FEATURE_RECIPES

MAX_SIDECAR_BYTES = 2**20
MAX_WINDOW_VALUES = 2**18  # window.length x channels: each sensor keeps two windows of float64 (4 MiB at this cap)
MAX_CALIBRATION_VALUES = 2**22  # calibration.samples x channels kept in memory during teach-in (32 MiB)


class ModelError(Exception):
    """A model file or sidecar that the agent refuses, with the reason."""


class _Spec(BaseModel):
    # every number in a sidecar must be finite: a NaN mean, std or threshold switches alerting off silently
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TensorSpec(_Spec):
    shape: list[int]
    dtype: Literal["int8", "uint8", "float32", "int16"]


class OutputSpec(TensorSpec):
    meaning: str = ""


class WindowSpec(_Spec):
    length: int = Field(ge=1, le=65536)
    hop: int = Field(ge=1)

    @model_validator(mode="after")
    def _hop(self) -> "WindowSpec":
        if self.hop > self.length:
            raise ValueError(f"hop ({self.hop}) must not exceed length ({self.length})")
        return self


class NormalisationSpec(_Spec):
    method: Literal["zscore", "none"]
    mean: list[float] | None = None
    std: list[float] | None = None

    @model_validator(mode="after")
    def _std(self) -> "NormalisationSpec":
        if self.std is not None and any(v < 0 for v in self.std):
            raise ValueError("std values must not be negative")
        return self


class DecisionSpec(_Spec):
    k: int = Field(3, ge=1, le=MAX_K_OF_N)  # the bound of the configuration's decision.k / decision.n
    n: int = Field(5, ge=1, le=MAX_K_OF_N)
    clear_ratio: float = Field(0.8, gt=0, le=1)
    recede_ratio: float = Field(0.0, ge=0, lt=1)  # 0: off (agent.decide.AlertMachine)
    refractory: int = Field(1800, ge=1)  # windows for the floor after a receded clear to decay by e

    @model_validator(mode="after")
    def _k_le_n(self) -> "DecisionSpec":
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) must not exceed n ({self.n})")
        return self


class CalibrationSpec(_Spec):
    samples: int = Field(0, ge=0)
    fit: list[Literal["normalisation", "threshold"]] = Field(default_factory=list)
    threshold_quantile: float = Field(0.99, gt=0, le=1)
    threshold_factor: float = Field(1.0, gt=0)


class Sidecar(BaseModel):
    """The JSON sidecar of a model (contract in models/README.md)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    schema_: Literal[1] = Field(alias="schema")
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    kind: Literal["autoencoder", "classifier", "regressor"]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    input: TensorSpec
    output: OutputSpec
    channels: list[str] = Field(min_length=1)
    window: WindowSpec
    features: str
    normalisation: NormalisationSpec
    score: Literal["mse", "output", "abs_error"]
    threshold: float = Field(gt=0)
    decision: DecisionSpec = Field(default_factory=DecisionSpec)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    valid_ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)
    derived: list[DerivedSpec] = Field(default_factory=list)
    advice: AdviceSpec | None = None
    target: str | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        """The channels, then the derived features: what is normalised and fed to the model, in order."""
        return [*self.channels, *(d.name for d in self.derived)]

    @model_validator(mode="after")
    def _derived_ok(self) -> "Sidecar":
        problems = check_derived(self.channels, self.derived, self.valid_ranges)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _advice_ok(self) -> "Sidecar":
        if self.advice is not None:
            if self.kind != "classifier":
                raise ValueError("advice needs kind classifier (it lowers a failure probability)")
            problems = check_advice(self.channels, self.advice)
            if problems:
                raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _consistent(self) -> "Sidecar":
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels must be unique")
        c = len(self.columns)
        if self.features not in FEATURE_RECIPES:
            raise ValueError(f"features must be one of {', '.join(FEATURE_RECIPES)}")
        n = self.normalisation
        if n.method == "zscore" and "normalisation" not in self.calibration.fit:
            if n.mean is None or n.std is None:
                raise ValueError("normalisation zscore needs mean and std (or calibration.fit with normalisation)")
        for vec in (n.mean, n.std):
            if vec is not None and len(vec) != c:
                raise ValueError(f"normalisation mean/std must have one value per channel and derived feature ({c})")
        expected = {"autoencoder": "mse", "classifier": "output", "regressor": "abs_error"}[self.kind]
        if self.score != expected:
            raise ValueError(f"kind {self.kind} needs score {expected!r}")
        if self.kind == "regressor" and self.target not in self.channels:
            raise ValueError("a regressor needs target: one of its channels")
        unknown = set(self.valid_ranges) - set(self.channels)
        if unknown:
            raise ValueError(f"valid_ranges names unknown channels: {sorted(unknown)}")
        if self.calibration.samples and self.calibration.samples < self.window.length + self.decision.n:
            raise ValueError("calibration.samples must cover at least window.length + decision.n readings")
        if self.window.length * c > MAX_WINDOW_VALUES:
            raise ValueError(f"window.length x channels = {self.window.length * c} values, more than {MAX_WINDOW_VALUES}")
        if self.calibration.samples * c > MAX_CALIBRATION_VALUES:
            raise ValueError(f"calibration.samples x channels = {self.calibration.samples * c} values, more than {MAX_CALIBRATION_VALUES}")
        for name, (lo, hi) in self.valid_ranges.items():
            if lo > hi:
                raise ValueError(f"valid_ranges of {name}: min {lo} exceeds max {hi}")
        return self


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def read_sidecar(model_path: Path) -> Sidecar:
    """Parse and validate the sidecar beside ``model_path``; ModelError with every reason otherwise."""
    path = sidecar_path(model_path)
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            raise ModelError(f"{path}: larger than {MAX_SIDECAR_BYTES} bytes: not a sidecar")
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        if not os.path.exists(model_path):  # the model itself is not there: say that, not that its sidecar is missing
            raise ModelError(f"{model_path}: no such file") from e
        raise ModelError(f"{model_path}: sidecar {path.name} not found beside the model") from e
    except (OSError, ValueError, RecursionError) as e:
        raise ModelError(f"{path}: not readable JSON ({e})") from e
    try:
        return Sidecar.model_validate(raw)
    except ValidationError as e:
        reasons = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'sidecar'}: {err['msg']}" for err in e.errors())
        raise ModelError(f"{path}: {reasons}") from e
