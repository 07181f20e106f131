"""Fixtures for the deployment tests."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd")
    return path
