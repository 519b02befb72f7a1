"""``make bench`` cannot rot: the benchmarks on docker-otp boards run here in their quick mode
(one round, small sizes, no figure judged)."""

from __future__ import annotations

import pytest
from support.bench import run_quick_bench

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("name", ["compare", "link", "boards", "watch"])
def test_bench_runs_quick(name: str) -> None:
    run_quick_bench(name)
