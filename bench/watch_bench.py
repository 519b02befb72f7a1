"""Save -> reloaded on the board under ``relsync --watch``: the developer loop, end to end.

A copy of the example project runs under ``relsync --watch`` against one board; 20 saves of
demo_counter.erl (a new version number each) follow each other, each as soon as the previous
round's line is printed. The figure is the time from the save (the rename of the editor's
temporary file over the source) to the round's line, which relsync prints once the module is
reloaded on the board; each save's version is then read back from the board. The round's own
figure (rebar3 release + sync) is what the line reports; before it, the watcher waits for 50 ms
without further changes (at most 300 ms). Boards: a local one in erl mode (the
embedded default) and a docker-otp one over ssh (relsyncd), the same saves on each.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import tempfile
import time
from pathlib import Path

from bench.table import Row
from relsync.harness.example import build_example_release, copy_example_project
from relsync.harness.kinds import EmulatedBoard, start_board
from relsync.harness.watching import WatchRun, save, watch_argv

EDITS = 20
QUICK_EDITS = 2
BOARDS = (("local", "erl"), ("docker-otp", "ssh"))
_ROUND_MS = re.compile(r"\((\d+) ms\)")


async def _edits(
    board: EmulatedBoard, mode: str, work: Path, edits: int
) -> tuple[list[float], list[float]]:
    """Seconds from each save to its round's line, and each round's own figure (s)."""
    project = copy_example_project(work)
    counter = project / "src" / "demo_counter.erl"
    to_reloaded: list[float] = []
    rounds: list[float] = []
    async with WatchRun(watch_argv(board, mode, board.rw_path), project) as run:
        await run.started()
        for version in range(2, edits + 2):
            saved = save(counter, f"-define(VERSION, {version - 1}).",
                         f"-define(VERSION, {version}).")  # fmt: skip
            line = await run.round()
            to_reloaded.append(time.monotonic() - saved)
            if "reloaded demo_counter" not in line:
                raise RuntimeError(f"save {version - 1}: {line}")
            got = await board.rpc("demo_counter", "version")
            if got != version:
                raise RuntimeError(f"save {version - 1}: the board answers {got!r}")
            found = _ROUND_MS.search(line)
            rounds.append(int(found.group(1)) / 1000 if found else float("nan"))
    return to_reloaded, rounds


async def _measure(work: Path, edits: int) -> list[Row]:
    release = build_example_release()
    rows: list[Row] = []
    for kind, mode in BOARDS:
        board = await start_board(kind, release, workdir=work / kind, ssh=mode == "ssh")
        try:
            to_reloaded, rounds = await _edits(board, mode, work / f"{kind}-project", edits)
        finally:
            await board.stop()
        label = f"{kind} board, {mode}, {edits} saves"
        q = statistics.quantiles(to_reloaded, n=10, method="inclusive")
        rows.append(
            Row("watch", f"{label}: save -> reloaded, median (p10-p90)",
                f"{statistics.median(to_reloaded):.2f} s",
                f"{q[0]:.2f}-{q[-1]:.2f} s")
        )  # fmt: skip
        rows.append(
            Row("watch", f"{label}: the round (build + sync), median",
                f"{statistics.median(rounds):.2f} s",
                "after 50 ms of quiet (watchfiles)")
        )  # fmt: skip
    return rows


def run(quick: bool = False) -> list[Row]:
    """Boot each board, drive the saves, stop it; return the table rows (``quick``: two
    saves)."""
    with tempfile.TemporaryDirectory(prefix="relsync-bench-watch-") as tmp:
        return asyncio.run(_measure(Path(tmp), QUICK_EDITS if quick else EDITS))
