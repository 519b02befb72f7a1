"""A board's relsyncd can be older than the relsync talking to it (it is built into the
board's firmware): one from before ``sync_state`` answers ``unknown_function``, and relsync
then asks for the same things one by one; one from before the sync lock (``sync_state/4``) is
read with ``sync_state/3``, and written without a lock token; one from before ``load_fresh``
gets every module loaded once the files are in place."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from pathlib import Path

import pytest
from support.local_board import open_target, with_board

from relsync.engine import SyncOptions, sync
from relsync.erldist.etf import Atom, Term
from relsync.harness.example import Variant, build_example_release
from relsync.harness.local import LocalBoard
from relsync.release import scan_release, system_lib_prefixes
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


class _BeforeLoadFresh(SshTarget):
    """The board's real relsyncd, except that it does not know ``load_fresh``."""

    asked_fresh = 0

    async def _on_lane(self, function: str, args: list[Term]) -> Term:
        if function == "load_fresh":
            self.asked_fresh += 1
            return (Atom("error"), Atom("unknown_function"))
        return await super()._on_lane(function, args)


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
        assert old == dataclasses.replace(new, dest_kind=None, resolved=None)
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
            # no lock, so no token in the temporary name (the MD5 of "x.beam")
            md5 = hashlib.md5(b"x.beam", usedforsecurity=False).hexdigest().upper()
            assert target.temp_path("/data/x.beam") == f"/data/.relsync-tmp.{md5}.part"
            await target.unlock()  # no lock: nothing to release
            assert target.asked[-1] == ("sync_state", 3)
        finally:
            await target.close()

    with_board(build_example_release(), tmp_path / "board", body, "ssh")


def test_a_relsyncd_from_before_load_fresh_loads_new_modules_at_the_end(tmp_path: Path) -> None:
    extra = "-module(demo_extra).\n-export([hello/0]).\nhello() -> world.\n"
    v2 = Variant(build_example_release(), tmp_path / "v2").compile("demo_extra", extra)

    async def body(board: LocalBoard) -> None:
        target = await open_target(board, "ssh", _BeforeLoadFresh)
        assert isinstance(target, _BeforeLoadFresh)
        try:
            options = SyncOptions(dest_path=str(board.release_path), rw_path=str(board.rw_path))
            report = await sync(target, scan_release(v2.root), options)
        finally:
            await target.close()
        assert report.exit_code == 0, report.error
        assert target.asked_fresh == 1
        assert [(m.module, m.status) for m in report.modules] == [("demo_extra", "loaded")]
        assert await board.rpc("demo_extra", "hello", []) == "world"

    with_board(build_example_release(), tmp_path / "board", body, "ssh")
