"""A progress line for the harness's long steps (building an image, booting a board): on a
terminal, one line saying the phase and how long it has taken, rewritten every second and
cleared when the step ends; nothing otherwise (pipes, logs, CI, ``--json``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import TextIO

#: Where the line goes: the terminal, when stderr is one (see :func:`use_terminal`).
_out: TextIO | None = sys.stderr if sys.stderr.isatty() else None
#: The phases under way, innermost last: the line shows that one.
_phases: list[tuple[str, float]] = []


def use_terminal() -> None:
    """Keep writing to the terminal stderr is now, even once something captures stderr (as
    pytest does while ``relsync validate`` runs the checks)."""
    global _out
    if os.isatty(2):
        _out = os.fdopen(os.dup(2), "w", buffering=1)


def _draw() -> None:
    if _out is None:
        return
    line = ""
    if _phases:
        text, started = _phases[-1]
        line = f"relsync: {text}... {time.monotonic() - started:.0f} s"
    _out.write(f"\r\x1b[K{line}")
    _out.flush()


async def _tick() -> None:
    while True:
        _draw()
        await asyncio.sleep(1.0)


@contextlib.asynccontextmanager
async def phase(text: str) -> AsyncIterator[None]:
    """``async with phase("building the board image"):`` shows the line while the block runs."""
    if _out is None:
        yield
        return
    _phases.append((text, time.monotonic()))
    ticking = asyncio.ensure_future(_tick())
    try:
        yield
    finally:
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking
        _phases.pop()
        _draw()
