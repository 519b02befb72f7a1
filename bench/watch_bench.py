"""Save -> new code running on the board under ``relsync --watch``: the developer loop, end to end.

A copy of a project runs under ``relsync --watch`` against one board; 20 saves of one module
(a new version number each) follow each other, each as soon as the previous round's line is
printed. The figure is the time from the save (the rename of the editor's temporary file over
the source) to the round's line, which relsync prints once the module is reloaded on the board;
each save's version is then read back from the board. Before a round the watcher waits for
50 ms without further changes (at most 300 ms); a one-module change then goes through the warm
compiler (:mod:`relsync.fastbuild`), not a full build (the rows say how many did).

Projects: the example rebar3 project (demo_counter.erl) and a ``mix new --sup`` project
(counter.ex). Boards: a local one and a docker-otp one, each in erl and in ssh mode (relsyncd).
Beside them, on the local board in erl mode, the same saves with every round a full build
(``RELSYNC_WARM_COMPILER=off``, as before the warm compiler), for reference.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.table import Row
from relsync.harness.example import build_example_release, copy_example_project
from relsync.harness.kinds import EmulatedBoard, start_board
from relsync.harness.watching import WatchRun, save, watch_argv

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "py"))
from support.mix_project import mix_env, mix_release

EDITS = 20
QUICK_EDITS = 2
#: Saves of the reference rows: every round a full build (the warm compiler off).
FULL_EDITS = 5
BOARDS = (("local", "erl"), ("local", "ssh"), ("docker-otp", "erl"), ("docker-otp", "ssh"))
_ROUND_MS = re.compile(r"\((\d+) ms\)")
#: A quick run's boards (per project kind).
QUICK_BOARDS = {"rebar3": (("local", "erl"), ("docker-otp", "ssh")), "mix": (("local", "erl"),)}


@dataclass(frozen=True, slots=True)
class Project:
    """A project kind: the module edited, how its source says the version, its release."""

    kind: str
    source: str
    module: str
    #: How the round's line names the module.
    named: str
    text: Callable[[int], str]
    #: Goal from the issue: save -> new code running, median of 20 saves.
    target_s: float


PROJECTS = (
    Project("rebar3", "src/demo_counter.erl", "demo_counter", "demo_counter",
            lambda v: f"-define(VERSION, {v}).", 0.25),
    Project("mix", "lib/myex/counter.ex", "Elixir.Myex.Counter", "Myex.Counter",
            lambda v: f":reply, {v}, n}}", 0.6),
)  # fmt: skip


def _copy(project: Project, work: Path, base: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the project to edit (without build output) and the environment to build it."""
    if project.kind == "rebar3":
        return copy_example_project(work), dict(os.environ)
    where = work / "myex"
    shutil.copytree(base, where, symlinks=True, ignore=shutil.ignore_patterns("_build"))
    return where, mix_env(work)


async def _edits(
    board: EmulatedBoard, mode: str, project: Project, where: Path, env: dict[str, str],
    edits: int,
) -> tuple[list[float], list[float], int]:  # fmt: skip
    """Seconds from each save to its round's line, each round's own figure (s), and how many
    rounds the warm compiler served."""
    source = where / project.source
    to_reloaded: list[float] = []
    rounds: list[float] = []
    async with WatchRun(watch_argv(board, mode, board.rw_path), where, env=env) as run:
        await run.started()
        for version in range(2, edits + 2):
            saved = save(source, project.text(version - 1), project.text(version))
            line = await run.round()
            to_reloaded.append(time.monotonic() - saved)
            if f"reloaded {project.named}" not in line:
                raise RuntimeError(f"save {version - 1}: {line}")
            got = await board.rpc(project.module, "version")
            if got != version:
                raise RuntimeError(f"save {version - 1}: the board answers {got!r}")
            found = _ROUND_MS.search(line)
            rounds.append(int(found.group(1)) / 1000 if found else float("nan"))
    return to_reloaded, rounds, run.stderr.count("(warm compiler)")


async def _release(project: Project, work: Path) -> tuple[Path, Path]:
    """The project's base (for mix: built here) and its release, which the boards boot."""
    if project.kind == "rebar3":
        return Path(), build_example_release()
    base = work / "mix-base" / "myex"
    base.parent.mkdir(parents=True)
    release = mix_release(base, 1)
    return base, shutil.copytree(release, work / "mix-release", symlinks=True)


async def _measure(work: Path, quick: bool) -> list[Row]:
    rows: list[Row] = []
    for project in PROJECTS:
        base, release = await _release(project, work)
        runs = [
            (kind, mode, QUICK_EDITS if quick else EDITS, True)
            for kind, mode in (QUICK_BOARDS[project.kind] if quick else BOARDS)
        ]
        runs.append(("local", "erl", QUICK_EDITS if quick else FULL_EDITS, False))
        for kind, mode, edits, warm_compiler in runs:
            label = f"{project.kind}, {kind} board, {mode}"
            at = work / f"{project.kind}-{kind}-{mode}-{warm_compiler}"
            board = await start_board(kind, release, workdir=at / "board", ssh=mode == "ssh")
            try:
                where, env = _copy(project, at, base)
                if not warm_compiler:
                    env["RELSYNC_WARM_COMPILER"] = "off"
                to_reloaded, rounds, warm = await _edits(board, mode, project, where, env, edits)
            finally:
                await board.stop()
            median = statistics.median(to_reloaded)
            p90 = statistics.quantiles(to_reloaded, n=10, method="inclusive")[-1]
            how = f"warm compiler {warm}/{edits}" if warm_compiler else "every round a full build"
            rows.append(
                Row("watch", f"{label}: save -> new code running, median of {edits} saves"
                    + ("" if warm_compiler else " (warm compiler off, for reference)"),
                    f"{median:.2f} s", f"p90 {p90:.2f} s; the round (build + sync) "
                    f"{statistics.median(rounds):.2f} s; {how}",
                    f"<= {project.target_s} s" if warm_compiler else "",
                    median <= project.target_s if warm_compiler else None)
            )  # fmt: skip
    return rows


def run(quick: bool = False) -> list[Row]:
    """Boot each board, drive the saves, stop it; return the table rows (``quick``: two
    saves, fewer boards)."""
    with tempfile.TemporaryDirectory(prefix="relsync-bench-watch-") as tmp:
        return asyncio.run(_measure(Path(tmp), quick))
