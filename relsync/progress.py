"""A transfer progress bar on a terminal; silent everywhere else."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from relsync.words import size


class ProgressBar:
    """Redraws one line on ``stream`` at most ten times a second, only when it is a TTY."""

    def __init__(self, label: str, stream: TextIO = sys.stderr, *, enabled: bool = True) -> None:
        self._label = label
        self._stream = stream
        self._enabled = enabled and stream.isatty()
        self._total = 0
        self._done = 0
        self._drawn = 0.0

    def start(self, total: int) -> None:
        """Begin a transfer of ``total`` bytes."""
        self._total, self._done = total, 0

    def advance(self, nbytes: int) -> None:
        """Account for ``nbytes`` more sent."""
        self._done += nbytes
        now = time.monotonic()
        if self._enabled and self._total and (now - self._drawn > 0.1 or self._done >= self._total):
            self._drawn = now
            share = min(1.0, self._done / self._total)
            bar = "#" * int(share * 30)
            self._stream.write(
                f"\r{self._label} [{bar:<30}] {share:4.0%} {size(self._done)}/{size(self._total)}"
            )
            self._stream.flush()

    def finish(self) -> None:
        """Clear the line."""
        if self._enabled and self._drawn:
            self._stream.write("\r\033[K")
            self._stream.flush()
