"""Symlinks and unreadable parts of the local release, synced with the real command line to a
``local`` board (the example release on a read-only mount, a shadow tree), in both modes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.cli import relsync
from support.fake_release import deep_tree
from support.faults import tree
from support.local_board import with_board

from relsync.harness.example import APP_DIR, Variant
from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration

PRIV = f"{APP_DIR}/priv"


def linked(base: Path, root: Path) -> Variant:
    """demo_counter at version 2, with a directory and a file symlinked inside the release."""
    made = Variant(base, root).counter_version(2)
    (root / PRIV / "data").mkdir(parents=True)
    (root / PRIV / "data/a.txt").write_text("a")
    os.symlink("data", root / PRIV / "alias")
    os.symlink("data/a.txt", root / PRIV / "a.link")
    return made


def test_symlinks_inside_the_release_are_synced_as_symlinks(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    v2 = linked(demo_release, tmp_path / "v2")

    async def body(board: LocalBoard) -> None:
        rw = board.rw_path
        run = await relsync(board, v2.root, "-q", str(rw), "--json")
        assert run.code == 0, run
        assert {f"{PRIV}/alias", f"{PRIV}/a.link"} <= set(run.report["added"])
        assert os.readlink(rw / PRIV / "alias") == "data"
        assert os.readlink(rw / PRIV / "a.link") == "data/a.txt"
        read = await board.rpc("file", "read_file", [str(rw / PRIV / "alias/a.txt").encode()])
        assert read == ("ok", b"a")
        again = await relsync(board, v2.root, "-q", str(rw), "--json")
        assert again.code == 0 and again.report["added"] == again.report["changed"] == []

    with_board(demo_release, tmp_path / "board", body, mode)


def test_a_symlink_out_of_the_release_is_refused_and_nothing_written(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)
    outside = tmp_path / "host.conf"
    outside.write_text("from the host")
    os.symlink(outside, v2.root / PRIV / "host.conf")

    async def body(board: LocalBoard) -> None:
        rw = board.rw_path
        run = await relsync(board, v2.root, "-q", str(rw))
        assert run.code == 2, run
        assert "outside the release" in run.err and run.err.count("\n") == 1
        assert tree(rw) == {}
        assert await board.rpc("demo_counter", "version", []) == 1
        copied = await relsync(board, v2.root, "-q", str(rw), "--copy-unsafe-links")
        assert copied.code == 0, copied
        assert (rw / PRIV / "host.conf").read_text() == "from the host"
        assert not (rw / PRIV / "host.conf").is_symlink()

    with_board(demo_release, tmp_path / "board", body, mode)


@pytest.mark.parametrize("case", ["dangling", "loop", "too deep"])
def test_a_bad_part_of_the_release_never_reaches_the_board(
    demo_release: Path, tmp_path: Path, mode: str, case: str
) -> None:
    """A dangling symlink is skipped (reported) and the rest synced; a loop or a directory
    that cannot be read is exit 2 before anything is written."""
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)
    if case == "dangling":
        os.symlink("../../../../apps/demo/include", v2.root / APP_DIR / "include")
    elif case == "loop":
        os.symlink("..", v2.root / PRIV / "up")
    else:
        deep_tree(v2.root / PRIV)

    async def body(board: LocalBoard) -> None:
        rw = board.rw_path
        run = await relsync(board, v2.root, "-q", str(rw), "--json")
        if case == "dangling":
            assert run.code == 0, run
            skipped = {s["path"]: s["reason"] for s in run.report["skipped"]}
            assert skipped[f"{APP_DIR}/include"].startswith("dangling symlink")
            assert await board.rpc("demo_counter", "version", []) == 2
            return
        assert run.code == 2, run
        assert run.err.count("\n") == 1 and "Traceback" not in run.err
        assert tree(rw) == {}
        assert await board.rpc("demo_counter", "version", []) == 1

    with_board(demo_release, tmp_path / "board", body, mode)
