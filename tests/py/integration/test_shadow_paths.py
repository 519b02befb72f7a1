"""What ``-q`` may be (issue 29): never the release seen through a symlink, never a directory
of someone else's files, never empty; and what a shadow tree may lose (only what relsync put
there)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from support.cli import cli_argv, relsync
from support.local_board import with_board

from relsync.erldist.etf import Atom
from relsync.harness.example import Variant
from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration

EBIN = "lib/demo-0.1.0/ebin"


def _tree(root: Path) -> dict[str, str]:
    """Every entry below ``root``: a symlink's target, a file's MD5."""
    return {
        str(p.relative_to(root)): (
            f"-> {p.readlink()}" if p.is_symlink() else hashlib.md5(p.read_bytes()).hexdigest()
        )
        for p in sorted(root.rglob("*"))
        if p.is_symlink() or p.is_file()
    }


@pytest.mark.parametrize("writable", [True, False])
@pytest.mark.parametrize("inside", ["", "/lib/demo-0.1.0"])
def test_a_q_linked_to_the_release_is_refused(
    demo_release: Path, tmp_path: Path, writable: bool, inside: str
) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)

    async def body(board: LocalBoard) -> None:
        before = _tree(board.release_path)
        link = tmp_path / "shadow"
        link.symlink_to(f"{board.release_path}{inside}")
        for q in (str(link), f"{link}/sub"):
            run = await relsync(board, v2.root, "-q", q)
            assert run.code == 2 and "the release at" in run.err, run
            assert run.err.count("\n") == 1, run.err
        assert _tree(board.release_path) == before
        assert await board.rpc("demo_counter", "version") == 1

    with_board(demo_release, tmp_path / "board", body, writable=writable)


def test_a_q_holding_other_files_is_refused(demo_release: Path, tmp_path: Path) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)

    async def body(board: LocalBoard) -> None:
        data = board.rw_path.parent / "data-volume"  # the board's /data, given as -q by mistake
        (data / "photos").mkdir(parents=True)
        for rel in ("app.db", "notes.txt", "photos/cat.jpg"):
            (data / rel).write_text(rel)
        before = _tree(data)
        for extra in ([], ["--rollback", "--clean"]):
            run = await relsync(board, v2.root, "-q", str(data), *extra)
            assert run.code == 2 and "not a relsync shadow tree" in run.err, run
            assert run.err.count("\n") == 1 and "app.db" in run.err, run.err
            assert _tree(data) == before
        assert await board.rpc("demo_counter", "version") == 1

    with_board(demo_release, tmp_path / "board", body)


def test_a_shadow_tree_keeps_what_relsync_did_not_put_there(
    demo_release: Path, tmp_path: Path
) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").compile("extra_mod", "-module(extra_mod).\n")

    async def body(board: LocalBoard) -> None:
        rw, q = board.rw_path, str(board.rw_path)
        assert (await relsync(board, v2.root, "-q", q)).code == 0
        assert (rw / ".relsync-shadow").readlink() == board.release_path  # the marker
        theirs = ("notes.txt", "lib/other.txt", "releases/notes.txt", "mine/keep.txt")
        for rel in theirs:
            (rw / rel).parent.mkdir(parents=True, exist_ok=True)
            (rw / rel).write_text(rel)
        run = await relsync(board, demo_release, "-q", q, "--json")
        assert run.code == 0 and run.report["deleted"] == [f"{EBIN}/extra_mod.beam"], run
        assert all((rw / rel).read_text() == rel for rel in theirs)
        (rw / ".relsync-shadow").unlink()  # a tree from before the marker, with them in it
        assert (await relsync(board, demo_release, "-q", q)).code == 2
        for rel in theirs:
            (rw / rel).unlink()
        assert (await relsync(board, demo_release, "-q", q)).code == 0  # known by its shape
        assert (rw / ".relsync-shadow").is_symlink()
        (rw / "notes.txt").write_text("mine")
        back = await relsync(board, demo_release, "-q", q, "--rollback", "--clean")
        assert back.code == 0, back
        assert _tree(rw) == {"notes.txt": hashlib.md5(b"mine").hexdigest()}

    with_board(demo_release, tmp_path / "board", body)


def test_an_empty_q_is_refused(demo_release: Path, tmp_path: Path) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)
    project = tmp_path / "project"  # relsync.toml is read beside rebar.config
    project.mkdir()
    (project / "rebar.config").write_text("{erl_opts, []}.\n")
    (project / "relsync.toml").write_text('[relsync]\ndestination_rw_path = ""\n')

    async def body(board: LocalBoard) -> None:
        before = _tree(board.release_path)
        run = await relsync(board, v2.root, "-q", "")
        assert run.code == 2 and "--destination-rw-path is empty" in run.err, run
        argv = cli_argv(board, v2.root, mode="erl")
        done = subprocess.run(argv, cwd=project, capture_output=True, text=True, check=False)
        assert done.returncode == 2, done
        assert done.stderr.count("\n") == 1 and "is empty" in done.stderr, done.stderr
        assert _tree(board.release_path) == before  # not written in place
        assert await board.rpc("demo_counter", "version") == 1

    with_board(demo_release, tmp_path / "board", body, writable=True)


README_HOOKS = """-module(relsync_hooks).
-export([presync/0, postsync/0]).
presync() -> supervisor:terminate_child(demo_sup, demo_port).
postsync() -> {ok, _} = supervisor:restart_child(demo_sup, demo_port), ok.
"""


@pytest.mark.parametrize("mode", ["erl", "ssh"])
def test_the_readme_hooks_example_runs(demo_release: Path, tmp_path: Path, mode: str) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)
    hooks = tmp_path / "relsync_hooks.erl"  # the README's own name for the user's module
    hooks.write_text(README_HOOKS)
    ours = tmp_path / "relsync_target.erl"  # the name of relsync's own helper
    ours.write_text(README_HOOKS.replace("relsync_hooks", "relsync_target"))

    async def body(board: LocalBoard) -> None:
        q = str(board.rw_path)
        refused = await relsync(board, v2.root, "-q", q, "-H", str(ours))
        assert refused.code == 2 and "relsync's own modules" in refused.err, refused
        assert refused.err.count("\n") == 1
        run = await relsync(board, v2.root, "-q", q, "-H", str(hooks), "--json")
        assert run.code == 0, run
        assert set(run.report["hooks"]) == {"presync", "postsync"}, run.out
        assert await board.rpc("demo_counter", "version") == 2

    with_board(demo_release, tmp_path / "board", body, mode)


def test_upgrade_after_the_tree_it_ran_from_was_cleaned(demo_release: Path, tmp_path: Path) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)

    async def body(board: LocalBoard) -> None:
        q = str(board.rw_path)
        assert (await relsync(board, v2.root, "-q", q)).code == 0
        assert (await relsync(board, demo_release, "-q", q)).code == 0
        assert (await relsync(board, demo_release, "-q", q, "--rollback", "--clean")).code == 0
        # demo_counter still runs from the shadow tree's file, gone with --clean; the pristine
        # release has the same code: the upgrade keeps that to undo to.
        run = await relsync(board, v2.root, "-q", q, "--upgrade")
        assert run.code == 0, run
        assert await board.rpc("demo_counter", "version") == 2

    with_board(demo_release, tmp_path / "board", body)


LOOP = """-module(demo_loop).
-export([start/0, loop/0]).
start() -> P = spawn(?MODULE, loop, []), register(demo_loop, P), P.
loop() -> receive stop -> ok end.
"""


def test_a_module_rollback_kept_in_use_goes_on_the_next_rollback(
    demo_release: Path, tmp_path: Path
) -> None:
    looping = Variant(demo_release, tmp_path / "loop").compile("demo_loop", LOOP)

    async def body(board: LocalBoard) -> None:
        q = str(board.rw_path)
        assert (await relsync(board, looping.root, "-q", q)).code == 0
        await board.rpc("demo_loop", "start", [])
        kept = await relsync(board, demo_release, "-q", q, "--rollback")
        assert kept.code == 6 and "demo_loop" in kept.err, kept
        status = await relsync(board, demo_release, "-q", q, "--status", "--json")
        assert "demo_loop" in str(status.report), status.out  # pending
        await board.rpc("erlang", "send", [Atom("demo_loop"), Atom("stop")])
        again = await relsync(board, demo_release, "-q", q, "--rollback")
        assert again.code == 0 and "nothing to roll back" not in again.out, again
        assert await board.rpc("code", "is_loaded", [Atom("demo_loop")]) == Atom("false")

    with_board(demo_release, tmp_path / "board", body)


def test_status_to_a_reader_that_left_ends_quietly(demo_release: Path, tmp_path: Path) -> None:
    async def body(board: LocalBoard) -> None:
        argv = cli_argv(board, demo_release, "-q", str(board.rw_path), "--status", mode="erl")
        read, write = os.pipe()
        os.close(read)  # relsync --status | head -0
        done = subprocess.run(argv, stdout=write, stderr=subprocess.PIPE, check=False)
        os.close(write)
        assert done.returncode == 141 and done.stderr == b"", done.stderr.decode()

    with_board(demo_release, tmp_path / "board", body)
