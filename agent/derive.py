"""Derived features: a small fixed set of operations on two channels, computed on the device.

A sidecar may declare ``derived`` features (models/README.md): each is ``scale × (a op b) + offset`` with ``op`` one
of ``product``, ``difference`` or ``ratio`` of two of the model's channels. They are computed on the cleaned raw
values, appended after the channels, and normalised and fed to the model like channels. There is no expression
language on purpose: a sidecar is data, and data must not be able to run code.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

OPS = ("product", "difference", "ratio")
MAX_DERIVED = 32
# the denominator of a ratio never gets closer to zero than this (a cleaning override may admit 0)
MIN_DENOMINATOR = 1e-12


class DerivedSpec(BaseModel):
    """One derived feature: ``scale * (a <op> b) + offset``."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    op: Literal["product", "difference", "ratio"]
    a: str = Field(min_length=1)
    b: str = Field(min_length=1)
    scale: float = 1.0
    offset: float = 0.0


def check_derived(
    channels: Sequence[str], derived: Sequence[DerivedSpec], valid_ranges: dict[str, tuple[float, float]],
) -> list[str]:
    """Every problem with ``derived`` for a model reading ``channels``; empty when they can be computed safely."""
    problems: list[str] = []
    if len(derived) > MAX_DERIVED:
        problems.append(f"at most {MAX_DERIVED} derived features ({len(derived)} given)")
    known = set(channels)
    seen: set[str] = set()
    for d in derived:
        if d.name in known:
            problems.append(f"derived {d.name!r}: name already used by a channel")
        elif d.name in seen:
            problems.append(f"derived {d.name!r}: name given twice")
        seen.add(d.name)
        for side in (d.a, d.b):
            if side not in known:
                problems.append(f"derived {d.name!r}: unknown channel {side!r} (operands are channels)")
        if not (math.isfinite(d.scale) and math.isfinite(d.offset)):
            problems.append(f"derived {d.name!r}: scale and offset must be finite numbers")
        elif d.scale == 0:
            problems.append(f"derived {d.name!r}: scale 0 makes a constant")
        if d.op == "ratio" and d.b in known:
            lo, hi = valid_ranges.get(d.b, (-math.inf, math.inf))
            if not (lo > 0 or hi < 0):
                problems.append(
                    f"derived {d.name!r}: ratio needs valid_ranges for {d.b!r} that exclude 0 (division by zero)"
                )
    return problems


class Deriver:
    """Appends the derived features to raw rows: ``(..., C)`` → ``(..., C + D)``; identity when there are none."""

    def __init__(self, channels: Sequence[str], derived: Sequence[DerivedSpec]):
        idx = {c: i for i, c in enumerate(channels)}
        self.specs = list(derived)
        self.names = [d.name for d in derived]
        self._ops = [(d.op, idx[d.a], idx[d.b], float(d.scale), float(d.offset)) for d in derived]

    def __len__(self) -> int:
        return len(self._ops)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if not self._ops:
            return raw
        raw = np.asarray(raw, dtype=np.float64)
        c = raw.shape[-1]
        if raw.size == c:  # one row (a window of one reading): Python floats, the same IEEE operations, no ufuncs
            return self._one_row(raw, c)
        out = np.empty(raw.shape[:-1] + (c + len(self._ops),))
        out[..., :c] = raw
        for k, (op, ia, ib, scale, offset) in enumerate(self._ops):
            a, b = raw[..., ia], raw[..., ib]
            if op == "product":
                v = a * b
            elif op == "difference":
                v = a - b
            else:
                v = a / np.where(np.abs(b) < MIN_DENOMINATOR, np.copysign(MIN_DENOMINATOR, b), b)
            out[..., c + k] = v * scale + offset
        return out

    def _one_row(self, raw: np.ndarray, c: int) -> np.ndarray:
        if raw.ndim == 2:  # a window of one reading (1 x C): the common case, without reshapes
            row = raw.tolist()[0]
            return np.array(row + self._extra(row))[None]
        row = raw.reshape(-1).tolist()
        return np.array(row + self._extra(row)).reshape(raw.shape[:-1] + (c + len(self._ops),))

    def _extra(self, row: list[float]) -> list[float]:
        """The derived features of one row of Python floats."""
        extra = []
        for op, ia, ib, scale, offset in self._ops:
            a, b = row[ia], row[ib]
            if op == "product":
                v = a * b
            elif op == "difference":
                v = a - b
            else:
                v = a / (math.copysign(MIN_DENOMINATOR, b) if abs(b) < MIN_DENOMINATOR else b)  # np.where's test
            extra.append(v * scale + offset)
        return extra

    def describe(self) -> list[str]:
        """One readable line per feature, e.g. ``power_W = 0.10472 × (Torque [Nm] × Rotational speed [rpm])``."""
        return [formula(d) for d in self.specs]


def formula(d: DerivedSpec) -> str:
    """``name = scale × (a op b) + offset`` in words a person reads."""
    sym = {"product": "×", "difference": "−", "ratio": "÷"}[d.op]
    text = f"({d.a} {sym} {d.b})"
    if d.scale != 1.0:
        text = f"{d.scale:g} × {text}"
    if d.offset:
        text += f" + {d.offset:g}"
    return f"{d.name} = {text}"
