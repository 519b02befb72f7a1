"""Syncs that converge whatever the release's names and types: a 255-byte file name, a name
that is not UTF-8, a name that looks like one of relsync's temporary files, and paths whose
type changes (a symlink becomes a directory, a file a directory, and back). In both modes, in
place and into a shadow tree: the first sync exits 0, the board's effective tree equals the
local release (content, mode, symlink target), and a second sync does nothing."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cli import relsync
from support.local_board import with_board

from relsync.harness.example import APP_DIR, Variant
from relsync.harness.local import LocalBoard
from relsync.release import SYNCED_TOP_DIRS, is_shared_lib, system_lib_prefixes
from relsync.target import TEMP_PREFIX

pytestmark = pytest.mark.integration

PRIV = f"{APP_DIR}/priv"
LONG = "n" * 251 + ".txt"  # 255 bytes: NAME_MAX
NOTHING = ("added", "changed", "deleted", "written", "linked", "reload")


@pytest.fixture(params=["in place", "shadow"])
def place(request: pytest.FixtureRequest) -> str:
    """Where the sync writes: the (writable) release itself, or a shadow tree (``-q``)."""
    return str(request.param)


def _entry(path: str) -> str:
    if os.path.islink(path):
        return f"link:{os.readlink(path)}"
    st = os.stat(path)
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    return f"file:{digest}:{stat.S_IMODE(st.st_mode):o}"


def release_tree(root: Path, original: Path | None = None) -> dict[str, str]:
    """The synced part of a release: each file's content and mode, each symlink's text.
    With ``original``, ``root`` is a shadow tree: a link to the original stands for it."""
    skip = system_lib_prefixes()
    base = os.fsencode(root)
    out: dict[str, str] = {}
    for top in SYNCED_TOP_DIRS:
        for dirpath, dirs, files in os.walk(os.path.join(base, os.fsencode(top))):
            for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
                path = os.path.join(dirpath, name)
                rel = os.fsdecode(os.path.relpath(path, base))
                if rel.startswith(skip) or is_shared_lib(rel):
                    continue
                text = os.fsdecode(os.readlink(path)) if os.path.islink(path) else ""
                if original is not None and text.startswith(f"{original}/"):
                    path = os.fsencode(text)
                out[rel] = _entry(os.fsdecode(path))
    return out


def converges(
    board_release: Path,
    steps: list[Path],
    tmp_path: Path,
    mode: str,
    place: str,
    check: Callable[[LocalBoard, Path], None] = lambda board, root: None,
) -> None:
    """Boot a board on ``board_release``, then sync each release of ``steps`` in turn: each
    sync exits 0 and leaves the board's effective tree equal to it, and the same sync again
    right away changes nothing."""

    async def body(board: LocalBoard) -> None:
        rw = ["-q", str(board.rw_path)] if place == "shadow" else []
        root = board.rw_path if place == "shadow" else board.release_path
        original = board.release_path if place == "shadow" else None
        for local in steps:
            run = await relsync(board, local, *rw, "--json")
            assert run.code == 0, (local.name, run.err)
            assert release_tree(root, original) == release_tree(local), local.name
            check(board, root)
            again = await relsync(board, local, *rw, "--json")
            assert again.code == 0, (local.name, again.err)
            done = {key: again.report[key] for key in NOTHING}
            assert done == {key: [] for key in NOTHING}, local.name
            assert again.report["bytes_sent"] == 0, local.name

    with_board(board_release, tmp_path / "board", body, mode, writable=place == "in place")


def test_a_255_byte_name_is_synced(
    demo_release: Path, tmp_path: Path, mode: str, place: str
) -> None:
    """Files of 255-byte names, small (in a batch) and big (in chunks, over SFTP in ssh
    mode, then as a block delta), and a symlink of one."""
    v2 = Variant(demo_release, tmp_path / "v2")
    priv = v2.root / PRIV
    (priv / LONG).write_text("long")
    big = os.urandom(5 << 20)
    (priv / ("b" * 255)).write_bytes(big)
    os.symlink(LONG, priv / ("l" * 255))
    v3 = Variant(v2.root, tmp_path / "v3")
    (v3.root / PRIV / ("b" * 255)).write_bytes(big[:-1000] + os.urandom(1000))
    converges(demo_release, [v2.root, v3.root], tmp_path, mode, place)


def test_a_name_that_is_not_utf8_is_synced_exactly(
    demo_release: Path, tmp_path: Path, mode: str, place: str
) -> None:
    v2 = Variant(demo_release, tmp_path / "v2")
    priv = os.fsencode(v2.root / PRIV)
    with open(os.path.join(priv, b"caf\xe9.txt"), "wb") as handle:
        handle.write(b"latin-1 name")
    os.mkdir(os.path.join(priv, b"d\xff"))
    with open(os.path.join(priv, b"d\xff", b"big\xfe"), "wb") as handle:
        handle.write(os.urandom(5 << 20))
    os.symlink(b"caf\xe9.txt", os.path.join(priv, b"link\xe9"))
    converges(demo_release, [v2.root], tmp_path, mode, place)


def test_release_files_named_like_temporaries_are_kept(
    demo_release: Path, tmp_path: Path, mode: str, place: str
) -> None:
    v2 = Variant(demo_release, tmp_path / "v2")
    priv = v2.root / PRIV
    for name in (f"{TEMP_PREFIX}a.part", f"{TEMP_PREFIX}0123456789AB.x.part", TEMP_PREFIX):
        (priv / name).write_text(name)
    (v2.root / "releases" / f"{TEMP_PREFIX}notes.part").write_text("kept")
    converges(demo_release, [v2.root], tmp_path, mode, place)


def typed(base: Path, root: Path, flipped: bool) -> Path:
    """A release whose priv/ has one path of every type change: t1 a symlink to a directory
    (flipped: a directory), t2 a directory (a symlink), t3 a file (a directory), t4 a
    directory (a file), t5 a symlink to a file (a file), t6 a file (a symlink); and outside
    lib/, where nothing is deleted otherwise, releases/t7 a file (a directory)."""
    Variant(base, root)
    t7 = root / "releases" / "t7"
    if flipped:
        t7.mkdir()
        (t7 / "inside.txt").write_text("t7")
    else:
        t7.write_text("t7 file")
    priv = root / PRIV
    (priv / "data").mkdir()
    (priv / "data/a.txt").write_text("a")
    dir_ = ["t2", "t4"] if not flipped else ["t1", "t3"]
    for name in dir_:
        (priv / name).mkdir()
        (priv / name / "inside.txt").write_text(f"{name} {flipped}")
    for name in ["t3", "t6"] if not flipped else ["t4", "t5"]:
        (priv / name).write_text(f"{name} file")
    for name in ["t1"] if not flipped else ["t2"]:
        os.symlink("data", priv / name)
    for name in ["t5"] if not flipped else ["t6"]:
        os.symlink("data/a.txt", priv / name)
    return root


def test_every_type_change_converges(
    demo_release: Path, tmp_path: Path, mode: str, place: str
) -> None:
    before = typed(demo_release, tmp_path / "before", flipped=False)
    after = typed(demo_release, tmp_path / "after", flipped=True)
    converges(before, [before, after, before], tmp_path, mode, place)


def test_a_leftover_temporary_is_removed(demo_release: Path, tmp_path: Path, place: str) -> None:
    """A temporary an interrupted sync left (as the board names them now) goes, the release's
    own files stay."""
    v2 = Variant(demo_release, tmp_path / "v2")
    (v2.root / PRIV / "kept.txt").write_text("kept")

    def leftover(board: LocalBoard, root: Path) -> None:
        stale = root / PRIV / f"{TEMP_PREFIX}0123456789AB.{'f' * 32}.part"
        if not stale.exists():
            stale.write_text("half")

    converges(demo_release, [v2.root, v2.root], tmp_path, "erl", place, leftover)
