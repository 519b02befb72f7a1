"""Faults during a sync against a real read-only board: the relsync client SIGKILLed at many
moments, the rw path's disk full, and a port program replaced while it runs.

Each test boots a ``local`` board (see ``test_sync.py``) and runs the real ``relsync`` command
line as a process. Invariants checked after every fault: no half-written file under its final
name (every file of the shadow tree is a complete old or new version, every ``.beam`` on the
running VM's code path too), the node answers, and the next uninterrupted sync converges to
exactly what a clean sync produces.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from support.cli import relsync
from support.faults import (
    TMP_PREFIX,
    cli_argv,
    cut_offsets,
    expected_shadow,
    kill_when_paused,
    phase,
    port_programs,
    release_files,
    run_and_kill,
    sha,
    timed,
    tmp_leftovers,
    tree,
    without_tmp,
)
from support.local_board import with_board

from relsync.engine import SyncOptions, sync
from relsync.erldist.etf import Term
from relsync.harness.example import APP_DIR, Variant
from relsync.harness.local import LocalBoard, mount_points
from relsync.release import scan_release
from relsync.target import ModuleResult
from relsync.transports.erl import ErlTarget

pytestmark = pytest.mark.integration

PORT = f"{APP_DIR}/priv/demo_port"
#: Cut points per transport. ssh mode syncs a variant of only two files (see big_variant).
CUTS = {"erl": 50, "ssh": 20}
GEN_MODULES = [f"demo_gen{i:02d}" for i in range(40)]


def big_variant(base: Path, root: Path, tag: int, *, many_files: bool) -> Variant:
    """demo_counter at version ``tag`` plus megabytes of priv data (different for every tag).

    ``many_files``: also 40 new modules and 8 more priv files. Without it the variant has two
    files to write, the most ssh mode writes correctly (finding: OTP's ssh_sftpd gives a third
    concurrently open file the handle of another, so the data lands in the wrong file).
    """
    variant = Variant(base, root).counter_version(tag)
    priv = root / APP_DIR / "priv"
    rnd = random.Random(tag)
    if many_files:
        src = root.parent / f"{root.name}-gen"
        src.mkdir()
        for module in GEN_MODULES:
            (src / f"{module}.erl").write_text(
                f"-module({module}).\n-export([tag/0]).\ntag() -> {tag}.\n"
            )
        subprocess.run(
            ["erlc", "+deterministic", "-o", str(variant.ebin),
             *(str(src / f"{m}.erl") for m in GEN_MODULES)],
            check=True, capture_output=True,
        )  # fmt: skip
        for i in range(8):
            (priv / f"blob{i}.bin").write_bytes(rnd.randbytes(1_000_000))
        (priv / "big.bin").write_bytes(rnd.randbytes(12_000_000))  # several put_chunk calls
    else:
        (priv / "big.bin").write_bytes(rnd.randbytes(24_000_000))
    return variant


async def call(
    board: LocalBoard, module: str, function: str, args: list[Term] | None = None
) -> Term:
    return await board.rpc(module, function, args or [])


async def code_path_beams(board: LocalBoard) -> dict[Path, Path]:
    """Every ``*.beam`` (not a temporary file) in the code path directories that belong to the
    board's release or shadow tree: path on disk -> path relative to its release root."""
    path = await call(board, "code", "get_path")
    assert isinstance(path, list)
    found: dict[Path, Path] = {}
    for entry in path:
        directory = Path(str(entry))
        for root in (board.rw_path, board.release_path):
            if directory.is_relative_to(root):
                with contextlib.suppress(FileNotFoundError):  # an ebin not (yet) in the tree
                    for name in os.listdir(directory):
                        if name.endswith(".beam") and not name.startswith(TMP_PREFIX):
                            found[directory / name] = directory.relative_to(root) / name
    return found


def check_files(
    board: LocalBoard, beams: dict[Path, Path], known: list[dict[str, str]], when: str
) -> None:
    """No half-written file: every beam on the code path and every file of the shadow tree is
    byte-identical to one of the ``known`` versions of that path; every link resolves."""
    for path, rel in beams.items():
        assert path.exists(), f"{when}: {path} is on the code path but dangles"
        digest = sha(path)
        assert digest in {k.get(rel.as_posix()) for k in known}, (
            f"{when}: {path} is no known version of {rel} (half-written?)"
        )
    for name, entry in tree(board.rw_path).items():
        if entry == "tmp":
            continue
        kind, _, value = entry.partition(":")
        if kind == "link":
            assert f"{value}/".startswith(f"{board.release_path}/"), f"{when}: {name} -> {value}"
            assert (board.rw_path / name).exists(), f"{when}: {name} -> {value} dangles"
        else:
            assert value in {k.get(name) for k in known}, (
                f"{when}: {board.rw_path / name} is no known version (half-written?)"
            )


async def check_converged(
    board: LocalBoard, tag: int, expected: dict[str, str], many_files: bool, when: str
) -> list[str]:
    """The shadow tree is exactly what a clean sync builds and the VM runs its code; returns the
    temporary files left in the tree (the caller reports them)."""
    entries = tree(board.rw_path)
    leftovers = tmp_leftovers(board.rw_path)
    assert without_tmp(entries) == expected, f"{when}: shadow tree differs from a clean sync"
    assert await call(board, "demo_counter", "version") == tag, when
    modified = await call(board, "code", "modified_modules")
    assert isinstance(modified, list)
    assert [m for m in modified if str(m).startswith("demo")] == [], when
    if many_files:
        loaded = await call(board, "code", "all_loaded")
        assert isinstance(loaded, list)
        names = {str(item[0]) for item in loaded if isinstance(item, tuple)}
        assert set(GEN_MODULES) <= names, f"{when}: not loaded {set(GEN_MODULES) - names}"
    return leftovers


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_client_killed_mid_sync_never_leaves_half_written_files(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    many = mode == "erl"
    variants = {
        t: big_variant(demo_release, tmp_path / f"v{t}", t, many_files=many) for t in (2, 3)
    }
    contents = {1: release_files(demo_release)} | {
        t: release_files(v.root) for t, v in variants.items()
    }

    async def body(board: LocalBoard) -> None:
        rw = board.rw_path
        expected = {
            t: expected_shadow(board.release_path, contents[1], contents[t]) for t in (2, 3)
        }

        def argv(tag: int, *extra: str) -> list[str]:
            return cli_argv(board, variants[tag].root, "-q", str(rw), "--quiet", *extra, mode=mode)

        # Clean syncs: what a sync produces, and how long its parts take.
        for tag in (2, 3):
            code, seconds, err = await timed(argv(tag))
            assert code == 0, err
            assert await check_converged(board, tag, expected[tag], many, f"clean {tag}") == []
        code, full, err = await timed(argv(2))
        assert code == 0, err
        code, startup, err = await timed(argv(3, "--dry-run"))  # start-up, connect, read, plan
        assert code == 0, err
        code, seconds, err = await timed(argv(3))
        assert code == 0, err
        full = min(full, seconds)

        current, phases, leftovers = 3, Counter[str](), []
        offsets = cut_offsets(CUTS[mode], 0.9 * startup, full)
        for i, offset in enumerate(offsets):
            new = 2 if current == 3 else 3
            when = f"cut {i} at {offset:.3f} s ({current} -> {new})"
            killed, _ = await run_and_kill(argv(new), offset)
            # (b) the node answers, running either version; (a) nothing half-written.
            version = await call(board, "demo_counter", "version")
            assert version in (current, new), when
            beams = await code_path_beams(board)
            assert beams, when
            check_files(board, beams, [contents[1], contents[current], contents[new]], when)
            written = sum(
                1
                for rel, entry in expected[new].items()
                if entry.startswith("file:")
                and entry != expected[current].get(rel)
                and tree_entry(rw / rel) == entry
            )
            phases[phase(killed, version == new, written)] += 1
            # (c) the next uninterrupted sync converges.
            code, _, err = await timed(argv(new))
            assert code == 0, f"{when}: converging sync failed: {err}"
            left = await check_converged(board, new, expected[new], many, when)
            leftovers += [f"{when}: {p}" for p in left]
            current = new
        print(f"\n{mode}: {len(offsets)} cuts over {startup:.2f}..{full:.2f} s: {dict(phases)}")
        assert not leftovers, "temporary files left after a converging sync:\n" + "\n".join(
            leftovers
        )

    with_board(demo_release, tmp_path / "board", body, mode)


@pytest.mark.parametrize("point", ["files_replaced", "reloaded"])
def test_a_kill_at_each_pause_point_is_finished_by_the_next_sync(
    demo_release: Path, tmp_path: Path, mode: str, point: str
) -> None:
    """Killed where it counts, every time: after every file was replaced (in place and whole,
    the old code still running) and right after the reload (the new code running). The next
    sync finishes the job: the pending marks make it reload what the killed one did not."""
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)
    beam = f"{APP_DIR}/ebin/demo_counter.beam"

    async def body(board: LocalBoard) -> None:
        rw = board.rw_path
        argv = cli_argv(board, v2.root, "-q", str(rw), mode=mode)
        await kill_when_paused(argv, point)
        assert sha(rw / beam) == sha(v2.root / beam)  # the new file, whole
        assert "tmp" not in tree(rw).values()  # no temporary file left
        running = await call(board, "demo_counter", "version")
        assert running == (1 if point == "files_replaced" else 2)
        code, _, err = await timed(argv)
        assert code == 0, err
        assert await call(board, "demo_counter", "version") == 2

    with_board(demo_release, tmp_path / "board", body, mode)


def tree_entry(path: Path) -> str:
    if path.is_symlink():
        return f"link:{os.readlink(path)}"
    return f"file:{sha(path)}" if path.is_file() else "absent"


# --------------------------------------------------------------------------------------------
# Disk full


async def _mount_tmpfs(path: Path, size: str) -> None:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "relsync-test", str(path)],
        check=True, capture_output=True,
    )  # fmt: skip


def _umount(path: Path) -> None:
    while path in mount_points():
        done = subprocess.run(["umount", str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True)


@pytest.mark.timeout(120)
def test_disk_full_on_the_rw_path_fails_cleanly_then_converges(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)
    (v2.root / APP_DIR / "priv" / "data.bin").write_bytes(random.Random(7).randbytes(5_000_000))
    base, new = release_files(demo_release), release_files(v2.root)

    async def body(board: LocalBoard) -> None:
        rw = board.rw_path
        pristine = tree(board.release_path)
        await _mount_tmpfs(rw, "3m")
        try:
            run = await relsync(board, v2.root, "-q", str(rw))
            assert run.code == 5, (run.code, run.out, run.err)
            assert run.err.count("\n") == 1 and "Traceback" not in run.err, run.err
            assert "disk is full" in run.err and "free space" in run.err, run.err
            assert tree(board.release_path) == pristine
            beams = await code_path_beams(board)
            check_files(board, beams, [base, new], "after ENOSPC")
            assert await call(board, "demo_counter", "version") == 1
            left = tmp_leftovers(rw)
            print(f"\n{mode}: after ENOSPC: {run.err.strip()}; temporary files left: {left}")
            subprocess.run(["mount", "-o", "remount,size=64m", str(rw)], check=True)
            again = await relsync(board, v2.root, "-q", str(rw), "--json")
            assert again.code == 0, again.err
            assert without_tmp(tree(rw)) == expected_shadow(board.release_path, base, new)
            assert tmp_leftovers(rw) == []
            assert await call(board, "demo_counter", "version") == 2
        finally:
            _umount(rw)

    with_board(demo_release, tmp_path / "board", body, mode)


# --------------------------------------------------------------------------------------------
# A running port program replaced without a presync hook


async def _restart_port_program(board: LocalBoard, pid: int, expect: bytes) -> int:
    """Kill the port program's OS process; demo_port reopens it (from the code path's priv dir)
    on its next request. Returns the new program's pid."""
    os.kill(pid, signal.SIGKILL)
    assert await call(board, "demo_port", "ask", [b"x"]) == expect
    [new_pid] = port_programs(board.workdir)
    assert new_pid != pid
    return new_pid


def test_running_port_program_replaced_without_hook(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").port_version("v2")
    v3 = Variant(demo_release, tmp_path / "v3").port_version("v3")

    async def body(board: LocalBoard) -> None:
        rw = board.rw_path
        assert await call(board, "demo_port", "ask", [b"x"]) == b"v1:x"
        [pid] = port_programs(board.workdir)
        warnings: list[list[str]] = []
        for variant, running, tag in ((v2, b"v1:x", "v2"), (v3, b"v2:x", "v3")):
            run = await relsync(board, variant.root, "-q", str(rw), "--json")
            assert run.code == 0, run.err
            assert PORT in run.report["written"]  # relative to the tree
            # The running program is left alone and keeps answering with the old version ...
            assert port_programs(board.workdir).keys() == {pid}
            assert await call(board, "demo_port", "ask", [b"x"]) == running
            # ... while the file on disk is the complete new program.
            assert (rw / PORT).read_bytes() == (variant.root / PORT).read_bytes()
            assert os.access(rw / PORT, os.X_OK)
            assert tmp_leftovers(rw) == []
            warnings.append(run.report["warnings"])
            pid = await _restart_port_program(board, pid, f"{tag}:x".encode())
            # From the second round on, the program relsync replaces runs from the shadow tree.
            assert port_programs(board.workdir)[pid] == str(rw / PORT)
        # Each report names the busy port program (checked last: the rest holds without it).
        for each in warnings:
            assert any("demo_port" in w and "running" in w for w in each), warnings

    with_board(demo_release, tmp_path / "board", body, mode)


# --------------------------------------------------------------------------------------------
# Killed between writing the files and reloading them


class _KilledAtReload(Exception):
    """The client dies as the engine turns to reloading."""


async def _sync_until_code_path(board: LocalBoard, local: Path) -> None:
    """The real engine, cut when it turns to reloading (files written, code path switched), as
    when the client is killed there: a cut point the time offsets above rarely hit."""
    target = await ErlTarget.open(board.node, board.cookie, epmd_port=board.epmd_port)

    async def killed(*_args: object) -> list[ModuleResult]:
        raise _KilledAtReload

    target.load_modules = killed  # type: ignore[method-assign]
    try:
        options = SyncOptions(dest_path=str(board.release_path), rw_path=str(board.rw_path))
        with pytest.raises(_KilledAtReload):
            await sync(target, scan_release(local), options)
    finally:
        await target.close()


def test_killed_before_the_reload_next_sync_reloads(demo_release: Path, tmp_path: Path) -> None:
    extra = "-module(demo_extra).\n-export([hello/0]).\nhello() -> world.\n"
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2).compile("demo_extra", extra)

    async def body(board: LocalBoard) -> None:
        await _sync_until_code_path(board, v2.root)
        run = await relsync(board, v2.root, "-q", str(board.rw_path), "--json")
        assert run.code == 0, run.err
        assert await call(board, "demo_counter", "version") == 2, run.report["reload"]
        assert await call(board, "demo_extra", "hello") == "world"

    with_board(demo_release, tmp_path / "board", body, "erl")
