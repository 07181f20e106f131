"""Fixtures shared by the integration tests (the session's broker and the rest live in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def cleanup() -> Iterator[list[Any]]:
    """What a test started, ended in reverse order at its end, also when it fails: a source runner is finished
    (``finish``), a server stopped (``stop``), anything else closed (``close``)."""
    things: list[Any] = []
    yield things
    for t in reversed(things):
        (getattr(t, "finish", None) or getattr(t, "stop", None) or t.close)()
