"""What ``-q`` may be (issue 29): never the release seen through a symlink, never a directory
of someone else's files, never empty; and what a shadow tree may lose (only what relsync put
there)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from support.cli import relsync
from support.local_board import with_board

from relsync.harness.example import Variant
from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration


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
