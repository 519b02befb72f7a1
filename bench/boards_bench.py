"""One relsync run syncing 1, 4 and 8 docker-otp boards with the same small delta.

Eight boards boot the example release read-only (started concurrently, stopped at the end).
Every docker board is ``board@127.0.0.1`` and differs by its EPMD port, so the boards are named
in a ``--targets`` file. Each sync changes one beam (demo_counter's version) and a 4 KB data file
and pushes them into the shadow tree (``/data/relsync``) of the first N boards, in erl mode and
in ssh mode (relsyncd). The figure: the command's wall time (CLI start to exit, every board
reloaded) as a ratio to one board. Rounds are interleaved over N and mode, and the ratio is the
median of each round's own ratio (N boards / one board, measured a second apart): the machine's
speed drifts by a third over a few minutes here, which a ratio of medians would take for a cost.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.compare_bench import host_otp, run_cli
from bench.sync_bench import installed_env
from bench.table import Row
from relsync.harness.docker import DockerBoard, example_release
from relsync.harness.example import APP_DIR, Variant

BOARD_COUNTS = (1, 4, 8)
MODES = ("erl", "ssh")
ROUNDS = 21
#: A quick run: one and two boards, one round.
QUICK_COUNTS = (1, 2)
BLOB_BYTES = 4096
START_TIMEOUT_S = 300.0
#: Goal from the issue: eight boards take at most 1.5 times as long as one.
RATIO_TARGET = 1.5


async def _start_boards(release: Path, otp: int, workdir: Path, count: int) -> list[DockerBoard]:
    """``count`` boards started concurrently; none left running on failure.

    A failed start is tried once more: ports are picked free but can be taken by the time
    ``docker run`` publishes them (by another board starting at the same moment).
    """

    async def start() -> DockerBoard:
        return await asyncio.wait_for(
            DockerBoard.start(release, otp=otp, workdir=workdir, ssh=True), START_TIMEOUT_S
        )

    boards: list[DockerBoard] = []
    failed: list[BaseException] = []
    missing = count
    for _attempt in range(2):
        started = await asyncio.gather(*(start() for _ in range(missing)), return_exceptions=True)
        boards += [b for b in started if isinstance(b, DockerBoard)]
        failed = [b for b in started if not isinstance(b, DockerBoard)]
        missing = len(failed)
        if not missing:
            return boards
    await asyncio.gather(*(b.stop() for b in boards), return_exceptions=True)
    raise RuntimeError(f"{missing} of {count} boards did not start: {failed[0]!r}")


def _targets(boards: list[DockerBoard], mode: str, path: Path, env: dict[str, str]) -> Path:
    """A targets file naming ``boards`` in ``mode`` (cookies go into ``env``)."""
    lines: list[str] = []
    for n, board in enumerate(boards):
        lines += ["[[board]]", f'destination_path = "{board.release_path}"',
                  f'destination_rw_path = "{board.rw_path}"']  # fmt: skip
        if mode == "erl":
            env[f"BENCH_BOARD{n}_COOKIE"] = board.cookie
            lines += [f'node = "{board.node}"', f'cookie_env = "BENCH_BOARD{n}_COOKIE"',
                      f"epmd_port = {board.epmd_port}"]  # fmt: skip
        else:
            ssh = board.ssh
            assert ssh is not None
            lines += ['mode = "ssh"', 'host = "127.0.0.1"', f"port = {ssh.port}",
                      f'user = "{ssh.user}"', f'identity = "{ssh.identity}"']  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def _busy_cpu_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (every core, every process)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _sync(
    local: Path, targets: Path, known_hosts: Path, env: dict[str, str], count: int
) -> tuple[float, float, float]:
    """Sync ``local`` to every board of ``targets``: wall time, relsync's CPU time, and the
    machine's busy CPU time meanwhile (boards, docker's port proxies and relsync). Checks each
    board reloaded."""
    argv = [sys.executable, "-m", "relsync.cli", "--targets", str(targets), "-l", str(local),
            "--known-hosts", str(known_hosts), "--accept-new-host-key", "--json"]  # fmt: skip
    busy = _busy_cpu_seconds()
    run = run_cli(argv, env)
    busy = _busy_cpu_seconds() - busy
    if len(run.reports) != count or any("demo_counter" not in b["reload"] for b in run.reports):
        raise RuntimeError(f"expected demo_counter reloaded on {count} boards: {run.reports}")
    return run.wall, run.cpu, busy


def _bump(variant: Variant, version: int) -> None:
    """The delta: one changed beam and a few KB of data."""
    variant.counter_version(version)
    (variant.root / APP_DIR / "priv" / "bench_blob.bin").write_bytes(os.urandom(BLOB_BYTES))


async def _measure(work: Path, quick: bool) -> list[Row]:
    counts, rounds = (QUICK_COUNTS, 1) if quick else (BOARD_COUNTS, ROUNDS)
    otp = host_otp()
    release = await example_release(otp)
    variant = Variant(release, work / "rel")
    started = time.perf_counter()
    boards = await _start_boards(release, otp, work / "boards", max(counts))
    start_s = time.perf_counter() - started
    walls: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    try:
        env = installed_env(work / "pycache")
        known = work / "known_hosts"
        files = {(mode, n): _targets(boards[:n], mode, work / f"{mode}-{n}.toml", env)
                 for mode in MODES for n in counts}  # fmt: skip
        version = 2
        for mode in MODES:  # warm-up: every board gets its shadow tree and host key once
            _bump(variant, version)
            version += 1
            _sync(variant.root, files[mode, max(counts)], known, env, max(counts))
        for _ in range(rounds):
            for mode in MODES:
                for n in counts:
                    _bump(variant, version)
                    version += 1
                    figures = _sync(variant.root, files[mode, n], known, env, n)
                    walls.setdefault((mode, n), []).append(figures)
    finally:
        await asyncio.gather(*(b.stop() for b in boards), return_exceptions=True)

    rows = [
        Row("boards", f"start {len(boards)} docker-otp boards concurrently", f"{start_s:.1f} s")
    ]
    cores = os.cpu_count() or 1
    for mode in MODES:
        one = statistics.median(w for w, _, _ in walls[mode, 1])
        for n in counts:
            wall, cpu, busy = (statistics.median(f[i] for f in walls[mode, n]) for i in range(3))
            label = (
                f"{n} board{'s' if n > 1 else ''}, {mode} mode, 1 beam + {BLOB_BYTES // 1024} KB"
            )
            ratio = statistics.median(
                w / w1 for (w, _, _), (w1, _, _) in zip(walls[mode, n], walls[mode, 1], strict=True)
            )
            last = n == max(BOARD_COUNTS)  # the goal is for eight boards
            vs_one = f"{ratio:.2f}x one board (of medians: {wall / one:.2f}x)"
            rows.append(
                Row("boards", f"{label}, CLI start to reloaded (median of {rounds})",
                    f"{wall:.3f} s", "" if n == 1 else vs_one,
                    f"<= {RATIO_TARGET}x" if last else "", ratio <= RATIO_TARGET if last else None)
            )  # fmt: skip
            rows.append(
                Row("boards", f"{label}, CPU time: relsync / whole machine ({cores} cores)",
                    f"{cpu:.3f} / {busy:.2f} s", f"machine busy {busy / cores / wall:.0%}")
            )  # fmt: skip
    return rows


def run(quick: bool = False) -> list[Row]:
    """Start the boards, measure, stop them; return the table rows (``quick``: one and two
    boards, one round)."""
    with tempfile.TemporaryDirectory(prefix="relsync-bench-boards-") as tmp:
        return asyncio.run(_measure(Path(tmp), quick))
