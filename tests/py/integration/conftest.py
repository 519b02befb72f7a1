"""Fixtures shared by the integration suites that run the example release on local boards."""

from __future__ import annotations

from pathlib import Path

import pytest

from relsync.harness.example import build_example_release


@pytest.fixture(scope="session")
def demo_release() -> Path:
    """The example release, built by examples/build.sh if missing or out of date."""
    return build_example_release()


@pytest.fixture(params=["erl", "ssh"])
def mode(request: pytest.FixtureRequest) -> str:
    """The transport a test runs over."""
    return str(request.param)
