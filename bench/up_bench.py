"""How long a board takes to come up and to reboot, per kind: ``start_board`` on the example
release until the node answers with its main application started (images already built, so
what a user waits for on every ``relsync target up`` after the first), then clean reboots until
it answers again. Medians of a few rounds; qemu-arm is judged against the goals of issue 31
(up <= 10 s, reboot <= 12 s under TCG on 2 cores)."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench.table import Row
from relsync.harness.kinds import example_release, start_board

KINDS = ("local", "docker-otp-25", "qemu-arm")
ROUNDS = 3
#: kind -> (up, reboot) goals in seconds.
GOALS = {"qemu-arm": (10.0, 12.0)}


async def _measure(kind: str, rounds: int, workdir: Path) -> tuple[list[float], list[float]]:
    release = await example_release(kind)
    await (await start_board(kind, release, workdir=workdir, ssh=False)).stop()  # images built
    ups: list[float] = []
    reboots: list[float] = []
    for n in range(rounds):
        started = time.monotonic()
        board = await start_board(kind, release, workdir=workdir / str(n), ssh=False)
        ups.append(time.monotonic() - started)
        try:
            started = time.monotonic()
            await board.reboot()
            reboots.append(time.monotonic() - started)
        finally:
            await board.stop()
    return ups, reboots


def _row(kind: str, what: str, seconds: list[float], goal: float | None) -> Row:
    median = statistics.median(seconds)
    return Row(
        "up", f"{kind}: {what}, until the node answers (median of {len(seconds)})",
        f"{median:.1f} s", "", f"<= {goal:g} s" if goal else "",
        None if goal is None else median <= goal,
    )  # fmt: skip


def run(quick: bool = False) -> list[Row]:
    """One ``up`` and one ``reboot`` row per board kind (``quick``: the local board, once)."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="relsync-up-bench-") as tmp:
        for kind in KINDS[:1] if quick else KINDS:
            ups, reboots = asyncio.run(_measure(kind, 1 if quick else ROUNDS, Path(tmp) / kind))
            up_goal, reboot_goal = GOALS.get(kind, (None, None))
            rows += [_row(kind, "target up", ups, up_goal),
                     _row(kind, "reboot", reboots, reboot_goal)]  # fmt: skip
    return rows
