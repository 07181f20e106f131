"""The sidecar's ``advice`` section (models/README.md): the adjustable channels (bounds and step) and the maintenance
actions a search may propose, their checks against a model's channels, and ``EDGE_AGENT_ADVICE__ADJUSTABLE``'s
text form. Pydantic models only: importing this costs no search code."""

from __future__ import annotations

import math
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field

MAX_GRID = 100_000  # values per adjustable channel: more is a typo in min/max/step


class AdjustableSpec(BaseModel):
    """A channel the engineer may change, within ``min``..``max`` in steps of ``step``."""

    model_config = ConfigDict(extra="forbid")
    channel: str = Field(min_length=1)
    min: float
    max: float
    step: float = Field(gt=0)


class ActionSpec(BaseModel):
    """A maintenance action: sets channels to fixed values (e.g. a tool change sets tool wear to 0)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    set: dict[str, float] = Field(min_length=1)


class AdviceSpec(BaseModel):
    """The sidecar's ``advice`` section."""

    model_config = ConfigDict(extra="forbid")
    adjustable: list[AdjustableSpec] = Field(default_factory=list)
    actions: list[ActionSpec] = Field(default_factory=list)
    margin: float = Field(0.1, ge=0, lt=1)
    clearance_z: float = Field(0.0, ge=0, le=10)
    max_channels: int = Field(2, ge=1, le=3)


def check_advice(channels: Sequence[str], spec: AdviceSpec) -> list[str]:
    """Every problem with ``spec`` for a model reading ``channels``; empty when it can be searched."""
    problems: list[str] = []
    known = set(channels)
    seen: set[str] = set()
    for a in spec.adjustable:
        if a.channel not in known:
            problems.append(f"advice: adjustable channel {a.channel!r} is not one of the model's channels")
        if a.channel in seen:
            problems.append(f"advice: adjustable channel {a.channel!r} given twice")
        seen.add(a.channel)
        if not all(math.isfinite(v) for v in (a.min, a.max, a.step)):
            problems.append(f"advice: {a.channel!r}: min, max and step must be finite numbers")
        elif a.min > a.max:
            problems.append(f"advice: {a.channel!r}: min {a.min:g} exceeds max {a.max:g}")
        elif (a.max - a.min) / a.step > MAX_GRID:
            problems.append(f"advice: {a.channel!r}: more than {MAX_GRID} steps between min and max")
    names: set[str] = set()
    for act in spec.actions:
        if act.name in names:
            problems.append(f"advice: action {act.name!r} given twice")
        names.add(act.name)
        for ch, v in act.set.items():
            if ch not in known:
                problems.append(f"advice: action {act.name!r} sets unknown channel {ch!r}")
            if not math.isfinite(v):
                problems.append(f"advice: action {act.name!r}: value for {ch!r} must be a finite number")
    return problems


def parse_adjustable(text: str) -> list[AdjustableSpec]:
    """``Rotational speed [rpm]:1200:2800:10,Torque [Nm]:10:70:0.5`` → specs; ValueError naming the bad item."""
    out: list[AdjustableSpec] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        parts = item.rsplit(":", 3)  # the channel name may hold colons
        if len(parts) != 4 or not parts[0].strip():
            raise ValueError(f"{item!r}: expected channel:min:max:step")
        try:
            lo, hi, step = (float(p) for p in parts[1:])
        except ValueError:
            raise ValueError(f"{item!r}: min, max and step must be numbers") from None
        if not all(math.isfinite(v) for v in (lo, hi, step)) or lo > hi or step <= 0:
            raise ValueError(f"{item!r}: need finite min <= max and step > 0")
        out.append(AdjustableSpec(channel=parts[0].strip(), min=lo, max=hi, step=step))
    return out
