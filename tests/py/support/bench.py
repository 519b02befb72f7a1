"""Run one benchmark of ``make bench`` in its quick mode, as ``python -m bench --quick NAME``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
#: A quick benchmark's limit (none should come near it).
LIMIT_S = 280.0


def run_quick_bench(name: str) -> None:
    """Run benchmark ``name`` quickly; fail with its output when it crashes or prints no row."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", name], cwd=ROOT, capture_output=True,
        text=True, timeout=LIMIT_S, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"bench {name} failed ({done.returncode}):\n{done.stderr}"
    rows = [line for line in done.stdout.splitlines()[2:] if line.startswith(name)]
    assert rows, f"bench {name} printed no row:\n{done.stdout}\n{done.stderr}"
