"""A board's relsyncd can be older than the relsync talking to it (it is built into the
board's firmware): one from before ``sync_state`` answers ``unknown_function``, and relsync
then asks for the same things one by one; one from before the sync lock (``sync_state/4``) is
read with ``sync_state/3``, and written without a lock token."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from support.local_board import open_target, with_board

from relsync.erldist.etf import Atom, Term
from relsync.harness.example import build_example_release
from relsync.harness.local import LocalBoard
from relsync.release import system_lib_prefixes
from relsync.transports.helper import CALL_TIMEOUT
from relsync.transports.ssh import SshTarget

pytestmark = pytest.mark.integration


class _OldRelsyncd(SshTarget):
    """The board's real relsyncd, except that it does not know ``sync_state`` in the arities
    of ``unknown``."""

    asked: list[tuple[str, int]]
    unknown = (3, 4)

    async def _call(self, function: str, args: list[Term], timeout: float = CALL_TIMEOUT) -> Term:
        self.asked = [*getattr(self, "asked", []), (function, len(args))]
        if function == "sync_state" and len(args) in self.unknown:
            return (Atom("error"), Atom("unknown_function"))
        return await super()._call(function, args, timeout)


class _BeforeTheLock(_OldRelsyncd):
    unknown = (4,)


def test_read_from_a_relsyncd_without_sync_state(tmp_path: Path) -> None:
    async def body(board: LocalBoard) -> None:
        targets = [await open_target(board, "ssh", kind) for kind in (SshTarget, _OldRelsyncd)]
        try:
            where = (str(board.release_path), system_lib_prefixes(), str(board.rw_path))
            new, old = [await target.read(*where) for target in targets]
        finally:
            await asyncio.gather(*(target.close() for target in targets))
        assert isinstance(targets[1], _OldRelsyncd)
        assert targets[1].asked[:2] == [("sync_state", 4), ("sync_state", 3)]
        assert sorted(name for name, _ in targets[1].asked[2:]) == sorted(
            ["info", "manifest", "manifest", "code_state", "list_dir", "list_dir"]
        )
        assert new.dest_kind == "directory" and old.dest_kind is None
        assert old == dataclasses.replace(new, dest_kind=None)
        assert "bin/demo" in new.original and "lib" in new.top

    with_board(build_example_release(), tmp_path / "board", body, "ssh")


def test_a_relsyncd_from_before_the_lock_syncs_without_one(tmp_path: Path) -> None:
    async def body(board: LocalBoard) -> None:
        target = await open_target(board, "ssh", _BeforeTheLock)
        assert isinstance(target, _BeforeTheLock)
        try:
            where = (str(board.release_path), system_lib_prefixes(), str(board.rw_path))
            seen = await target.read(*where, lock="an old board's client")
            assert target.asked == [("sync_state", 4), ("sync_state", 3)]
            assert "bin/demo" in seen.original and seen.dest_kind is None
            assert target.temp_path("/data/x.beam") == "/data/.relsync-tmp.x.beam.part"
            await target.unlock()  # no lock: nothing to release
            assert target.asked[-1] == ("sync_state", 3)
        finally:
            await target.close()

    with_board(build_example_release(), tmp_path / "board", body, "ssh")
