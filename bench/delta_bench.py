"""Delta-transfer benchmark: a 10 MB priv file with 1 KB changed, synced to a real board.

A ``local`` board boots the example release plus a 10 MiB priv file (read-only); the relsync
command line then syncs a copy with 1 KiB of that file changed in the middle into the shadow
tree, once over Erlang distribution and once over ssh (relsyncd started beside the release, as
the integration tests do). Reported: the bytes relsync says it sent against the whole file, and
the host CPU :func:`relsync.delta.make_delta` takes on 10 MB (it runs in the event loop).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.table import Row
from relsync.delta import make_delta, signatures_of
from relsync.harness.client import run_relsync
from relsync.harness.example import build_example_release
from relsync.harness.local import LocalBoard

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "py"))
from support.big_file import BIG, SIZE, changed, random_bytes, with_big_file

#: The issue's goal for the bytes sent.
GOAL = 64 << 10
#: Where the 1 KiB edit goes: the middle of the file.
MIDDLE = SIZE // 2 + 100
ROUNDS = 5


async def _sync_once(release: Path, local: Path, workdir: Path, mode: str) -> tuple[int, float]:
    """Boot a board on ``release``, sync ``local`` into its shadow tree: (bytes sent, wall s)."""
    async with await LocalBoard.start(release, workdir=workdir) as board:
        if mode == "ssh":
            await board.enable_ssh()
        started = time.perf_counter()
        run = await run_relsync(board, local, "-q", str(board.rw_path), "--json", mode=mode)
        wall = time.perf_counter() - started
        if run.code != 0:
            raise RuntimeError(f"relsync over {mode} failed ({run.code}): {run.err.strip()}")
        if (board.rw_path / BIG).read_bytes() != (local / BIG).read_bytes():
            raise RuntimeError(f"over {mode}: the file on the board differs from the local one")
        sent: int = run.report["bytes_sent"]
        return sent, wall


def _cpu(new: bytes, old: bytes) -> float:
    """Median host seconds of make_delta(new) against ``old``'s block sums."""
    sums = signatures_of(old)
    times = []
    for _ in range(ROUNDS):
        started = time.process_time()
        make_delta(new, sums)
        times.append(time.process_time() - started)
    return statistics.median(times)


def run() -> list[Row]:
    """Measure and return the table rows."""
    old = random_bytes(SIZE, seed=100)
    new = changed(old, MIDDLE, seed=2)
    demo = build_example_release()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="relsync-bench-delta-") as tmp:
        work = Path(tmp)
        release = with_big_file(demo, work / "rel", old)
        local = with_big_file(demo, work / "v2", new)
        for mode in ("erl", "ssh"):
            sent, wall = asyncio.run(_sync_once(release, local, work / f"board-{mode}", mode))
            rows.append(
                Row("delta", f"10 MB priv file, 1 KB changed: bytes sent ({mode}, shadow)",
                    f"{sent / 1e3:.1f} kB", f"whole file {SIZE / 1e6:.1f} MB; sync {wall:.2f} s",
                    f"<= {GOAL // 1024} KiB", sent <= GOAL)
            )  # fmt: skip
    small = _cpu(new, old)
    unrelated = _cpu(random_bytes(SIZE, seed=3), old)
    rows.append(
        Row("delta", f"make_delta host CPU on 10 MB (median of {ROUNDS})",
            f"{small * 1e3:.0f} ms", f"nothing shared (goes whole): {unrelated * 1e3:.0f} ms")
    )  # fmt: skip
    return rows
