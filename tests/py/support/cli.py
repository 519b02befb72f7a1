"""Running the real relsync command line against a board, as a user would.

The code lives in :mod:`relsync.harness.client` (the pytest plugin's checks use it too).
"""

from __future__ import annotations

from relsync.harness.client import Run, cli_argv, run_relsync
from relsync.harness.client import Target as Board

relsync = run_relsync

__all__ = ["Board", "Run", "cli_argv", "relsync"]
