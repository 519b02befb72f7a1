"""Delta transfer of big files against a real board, over erl and ssh, shadow and in place.

A 10 MiB priv file with 1 KiB changed goes as a block delta (a few KiB instead of 10 MiB) and
ends byte-identical on the target; a file that changed completely goes whole; a base that is not
what relsync expected still ends right, as the target checks the rebuilt file's SHA-256 before
the rename (and a failed delta is followed by the whole file).
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.big_file import BIG, SIZE, changed, random_bytes, with_big_file
from support.cli import relsync
from support.local_board import open_target, with_board

from relsync.delta import BLOCK
from relsync.erldist.etf import Term
from relsync.harness.local import LocalBoard
from relsync.harness.relsyncd import SshAccess
from relsync.target import FilePut
from relsync.transports.helper import CALL_TIMEOUT

pytestmark = pytest.mark.integration

#: The issue's goal for a 10 MB file with 1 KB changed.
GOAL = 64 << 10
#: One block of literal data plus the ops, paths and framing around it.
ONE_BLOCK = BLOCK + 8192
#: Where the edits go: inside one block each (5 MiB and 2 MiB are multiples of a block).
MIDDLE, QUARTER, ELSEWHERE = (5 << 20) + 100, (2 << 20) + 100, (7 << 20) + 100


@pytest.fixture(scope="session")
def original() -> bytes:
    """The big file's content in the release the board boots."""
    return random_bytes(SIZE, seed=100)


@pytest.fixture(scope="session")
def big_release(
    demo_release: Path, original: bytes, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The example release with a 10 MiB priv file."""
    return with_big_file(demo_release, tmp_path_factory.mktemp("big") / "rel", original)


@dataclass(frozen=True)
class InPlace:
    """The board as the command line sees it, with a writable release at ``release_path``."""

    node: str
    cookie: str
    epmd_port: int
    ssh: SshAccess | None
    release_path: Path


def test_shadow_sends_a_small_change_as_a_delta(
    big_release: Path, original: bytes, tmp_path: Path, mode: str
) -> None:
    v2 = changed(original, MIDDLE, seed=2)
    v3 = changed(v2, QUARTER, seed=3)
    v4 = random_bytes(SIZE, seed=4)

    async def body(board: LocalBoard) -> None:
        rw = board.rw_path

        async def sync(content: bytes, name: str) -> int:
            local = with_big_file(big_release, tmp_path / name, content)
            run = await relsync(board, local, "-q", str(rw), "--json")
            assert run.code == 0, run.err
            assert run.report["changed"] == [BIG] and run.report["bytes_to_send"] == SIZE
            assert (rw / BIG).read_bytes() == content
            deltas.append(run.report["delta"])
            sent: int = run.report["bytes_sent"]
            return sent

        deltas: list[list[str]] = []

        # The shadow has no copy yet: the delta is against the original release's file.
        assert await sync(v2, "v2") <= min(GOAL, ONE_BLOCK)
        # Against the shadow's own copy, which has v2's edit already: one block, where the
        # original would need two.
        assert await sync(v3, "v3") <= ONE_BLOCK
        # Nothing in common: the file goes whole.
        assert await sync(v4, "v4") >= SIZE
        assert deltas == [[BIG], [BIG], []]  # what --json says went as one (relative)
        assert (board.release_path / BIG).read_bytes() == original  # read-only, never written
        assert not list(rw.rglob(".relsync-tmp.*"))

    with_board(big_release, tmp_path / "board", body, mode)


def test_in_place_delta_against_what_the_target_really_holds(
    big_release: Path, original: bytes, tmp_path: Path, mode: str
) -> None:
    v2 = changed(original, MIDDLE, seed=2)
    v3 = changed(v2, QUARTER, seed=3)
    v4 = random_bytes(SIZE, seed=4)

    async def body(board: LocalBoard) -> None:
        dest = board.rw_path / "inplace"  # writable, and among relsyncd's allowed paths
        shutil.copytree(big_release, dest, symlinks=True)
        view = InPlace(board.node, board.cookie, board.epmd_port, board.ssh, dest)

        async def sync(content: bytes, name: str) -> int:
            local = with_big_file(big_release, tmp_path / name, content)
            run = await relsync(view, local, "--json", "--force-path", mode=mode)  # a copy
            assert run.code == 0, run.err
            assert run.report["root"] == str(dest) and run.report["changed"] == [BIG]
            assert (dest / BIG).read_bytes() == content
            deltas.append(run.report["delta"])
            sent: int = run.report["bytes_sent"]
            return sent

        deltas: list[list[str]] = []

        assert await sync(v2, "v2") <= min(GOAL, ONE_BLOCK)
        # The target's copy changed behind relsync's back: the delta is made against the
        # bytes it really holds (two blocks differ now), and the result is right.
        (dest / BIG).write_bytes(changed(v2, ELSEWHERE, seed=5))
        assert ONE_BLOCK < await sync(v3, "v3") <= GOAL
        assert await sync(v4, "v4") >= SIZE
        assert deltas == [[BIG], [BIG], []]
        assert not list(dest.rglob(".relsync-tmp.*"))

    with_board(big_release, tmp_path / "board", body, mode)


def test_a_base_that_changes_or_vanishes_still_ends_right(
    big_release: Path, original: bytes, tmp_path: Path, mode: str
) -> None:
    v2 = changed(original, MIDDLE, seed=2)
    local = tmp_path / "big.bin"
    local.write_bytes(v2)
    digest = hashlib.sha256(v2).digest()

    async def body(board: LocalBoard) -> None:
        base = board.rw_path / "base.bin"
        base.parent.mkdir(parents=True, exist_ok=True)
        base.write_bytes(original)
        target = await open_target(board, mode)
        calls: list[tuple[str, Term]] = []
        real = target._call

        async def spy(function: str, args: list[Term], timeout: float = CALL_TIMEOUT) -> Any:
            result = await real(function, args, timeout)
            calls.append((function, result))
            if function == "block_signatures":  # the base changes once its sums are taken
                base.write_bytes(changed(original, 0, 4096, seed=9))
            return result

        target._call = spy  # type: ignore[method-assign]
        try:
            # The delta copies the base's first block, which changed: the target refuses the
            # rebuilt file (hash mismatch) and the whole file follows.
            sent: list[int] = []
            path = board.rw_path / "lib/x-1/priv/big.bin"
            deltas = await target.put_files([FilePut(str(path), str(local), SIZE, 0o644, digest,
                                                     str(base))], sent.append)  # fmt: skip
            assert deltas == []  # the delta was refused: the whole file went
            assert path.read_bytes() == v2
            assert [f for f, _ in calls[:2]] == ["block_signatures", "put_delta"]
            assert calls[1][1] == ("error", "hash_mismatch")
            assert SIZE < sum(sent) <= SIZE + GOAL
            # A base that is gone: no delta is tried, the file goes whole.
            calls.clear()
            sent.clear()
            other = board.rw_path / "lib/x-1/priv/other.bin"
            missing = str(board.rw_path / "missing.bin")
            await target.put_files([FilePut(str(other), str(local), SIZE, 0o644, digest,
                                            missing)], sent.append)  # fmt: skip
            assert other.read_bytes() == v2
            assert calls[0] == ("block_signatures", ("error", "enoent"))
            assert "put_delta" not in [f for f, _ in calls] and sum(sent) == SIZE
            assert not list(board.rw_path.rglob(".relsync-tmp.*"))
        finally:
            await target.close()

    with_board(big_release, tmp_path / "board", body, mode)
