"""Delta-transfer benchmark: a 10 MB priv file with 1 KB changed, synced to a real board.

A ``local`` board boots the example release plus a 10 MiB priv file (read-only); the relsync
command line then syncs a copy with 1 KiB of that file changed in the middle into the shadow
tree, once over Erlang distribution and once over ssh (relsyncd started beside the release, as
the integration tests do). Reported: the bytes relsync says it sent against the whole file, and
the host CPU :func:`relsync.delta.make_delta` takes on 10 MB (it runs in the event loop).

Memory: 1 KB changed in a 500 MB priv file, synced over erl into the shadow tree of a fresh
board, with the command line as a child process: its peak RSS (``ru_maxrss``), and how much the
board's beam process grew its peak (VmHWM before and after). With ``$RELSYNC_BENCH_BASELINE``
naming another relsync source tree (e.g. ``git archive COMMIT | tar -x -C DIR``), the same is
measured with that tree's client and helper, side by side.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.table import Row
from relsync.delta import make_delta, signatures_of
from relsync.harness.client import cli_argv, run_relsync
from relsync.harness.example import build_example_release
from relsync.harness.local import LocalBoard

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "py"))
from support.big_file import BIG, SIZE, changed, random_bytes, with_big_file, write_changed_pair

#: The issue's goal for the bytes sent.
GOAL = 64 << 10
#: Where the 1 KiB edit goes: the middle of the file.
MIDDLE = SIZE // 2 + 100
ROUNDS = 5
#: The big file of the memory rows: 500 MB (20 MB in a quick run).
HUGE = 500 * 10**6
QUICK_HUGE = 20 * 10**6
#: The issue's figures before streaming (client peak RSS, board growth), for reference.
ISSUE_BEFORE = "before (issue 18): client 1.07 GB, board +500 MB"
#: Runs the command line and reports its own peak RSS (KiB, Linux) on stderr at exit.
_MEASURED_CLI = (
    "import resource, runpy, sys\n"
    "try:\n"
    "    runpy.run_module('relsync.cli', run_name='__main__')\n"
    "finally:\n"
    "    print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
)


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


def _peak_rss(pid: int) -> int:
    """VmHWM of process ``pid``, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def _sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while piece := handle.read(1 << 20):
            digest.update(piece)
    return digest.digest()


async def _memory_once(
    release: Path, local: Path, workdir: Path, tree: Path | None
) -> tuple[int, int, int, float]:
    """Sync ``local`` (client code from ``tree``, else ours) to a fresh board on ``release``:
    (client peak RSS, board peak growth, bytes sent, wall s)."""
    async with await LocalBoard.start(release, workdir=workdir) as board:
        pid = board.pid
        assert pid is not None
        before = _peak_rss(pid)
        argv = cli_argv(board, local, "-q", str(board.rw_path), "--json", mode="erl")
        env = dict(os.environ)
        if tree is not None:  # its relsync first (``-c`` puts the working directory first)
            env["PYTHONPATH"] = str(tree)
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _MEASURED_CLI, *argv[3:], env=env, cwd=tree,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        wall = time.perf_counter() - started
        grown = _peak_rss(pid) - before
        text = err.decode()
        if proc.returncode != 0:
            raise RuntimeError(f"relsync failed ({proc.returncode}): {text.strip()}")
        if _sha256(board.rw_path / BIG) != _sha256(local / BIG):
            raise RuntimeError("the 500 MB file on the board differs from the local one")
        maxrss = int(text.rsplit("maxrss", 1)[1].split()[0]) * 1024
        sent: int = json.loads(out)["boards"][0]["bytes_sent"]
        return maxrss, grown, sent, wall


def _memory_rows(demo: Path, work: Path, huge: int) -> list[Row]:
    """The rows of a ``huge``-byte file: ours, and the baseline tree's when one is given."""
    release = with_big_file(demo, work / "huge-rel", b"")
    local = with_big_file(demo, work / "huge-v2", b"")
    write_changed_pair(release / BIG, local / BIG, huge, huge // 2 + 100)
    baseline = os.environ.get("RELSYNC_BENCH_BASELINE")
    trees: list[tuple[str, Path | None]] = [("ours", None)]
    if baseline:
        trees.append(("baseline", Path(baseline).resolve()))
    rows: list[Row] = []
    figures: dict[str, tuple[int, int, int, float]] = {}
    for name, tree in trees:
        figures[name] = asyncio.run(_memory_once(release, local, work / f"huge-{name}", tree))
    for name, _ in trees:
        client, board, sent, wall = figures[name]
        reference = ISSUE_BEFORE if name == "ours" else f"tree {baseline}"
        rows.append(
            Row("delta", f"1 KB change in a {huge // 10**6} MB file ({name}, erl): peak RSS "
                "client / board",
                f"{client / 1e6:.0f} MB / +{board / 1e6:.0f} MB",
                f"{reference}; sent {sent / 1e3:.1f} kB, sync {wall:.1f} s")
        )  # fmt: skip
    return rows


def _cpu(new: bytes, old: bytes, rounds: int) -> float:
    """Median host seconds of make_delta(new) against ``old``'s block sums."""
    sums = signatures_of(old)
    times = []
    for _ in range(rounds):
        started = time.process_time()
        make_delta(new, sums)
        times.append(time.process_time() - started)
    return statistics.median(times)


def run(quick: bool = False) -> list[Row]:
    """Measure and return the table rows (``quick``: a 20 MB file for memory, one round)."""
    rounds = 1 if quick else ROUNDS
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
        rows += _memory_rows(demo, work, QUICK_HUGE if quick else HUGE)
    small = _cpu(new, old, rounds)
    unrelated = _cpu(random_bytes(SIZE, seed=3), old, rounds)
    rows.append(
        Row("delta", f"make_delta host CPU on 10 MB (median of {rounds})",
            f"{small * 1e3:.0f} ms", f"nothing shared (goes whole): {unrelated * 1e3:.0f} ms")
    )  # fmt: skip
    return rows
