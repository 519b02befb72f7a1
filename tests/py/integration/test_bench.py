"""``make bench`` cannot rot: every benchmark that needs no emulated board runs here in its quick
mode (one round, small sizes, no figure judged). Those on docker-otp boards are in
``tests/py/e2e/test_bench_boards.py``."""

from __future__ import annotations

import pytest
from support.bench import run_quick_bench

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", ["dist", "sync", "delta"])
def test_bench_runs_quick(name: str) -> None:
    run_quick_bench(name)
