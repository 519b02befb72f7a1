"""The local scan in steps, overlapped with reading the target, and the packed manifest."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest
from support.fake_release import make_release

from relsync.engine import SyncOptions
from relsync.errors import TargetError
from relsync.local_scan import LocalScan, scan_while_reading
from relsync.release import SCAN_STEP, scan_release, scan_release_async, system_lib_prefixes
from relsync.target import CodeState, Readout, RemoteFile, RemoteLink, TargetInfo
from relsync.transports.helper import unpack_manifest


def _big_release(root: Path) -> Path:
    make_release(root)
    for n in range(SCAN_STEP * 2 + 10):
        path = root / f"lib/demo-0.1.0/priv/data/{n % 7}/f{n}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(str(n).encode())
    os.symlink(root / "lib/demo-0.1.0/priv/data/1", root / "lib/demo-0.1.0/priv/alias")
    return root


def _snapshot(root: Path, exclude: bool, async_: bool) -> tuple[object, ...]:
    if async_:
        rel = asyncio.run(scan_release_async(root, exclude_system_libs=exclude))
    else:
        rel = scan_release(root, exclude_system_libs=exclude)
    files = [(f.rel, f.path, f.size, f.mode, f.digest, f.kind) for f in rel.files.values()]
    return rel.name, rel.version, files, rel.skipped, rel.exclude_prefixes, rel.links


@pytest.mark.parametrize("exclude", [True, False])
def test_async_scan_finds_what_the_plain_scan_finds(tmp_path: Path, exclude: bool) -> None:
    root = _big_release(tmp_path / "demo")
    plain = _snapshot(root, exclude, async_=False)
    assert _snapshot(root, exclude, async_=True) == plain
    files = plain[2]
    assert isinstance(files, list)
    rels = {f[0] for f in files}
    assert "lib/demo-0.1.0/priv/alias/f1" not in rels  # a symlink inside stays a symlink
    assert plain[5] == {"lib/demo-0.1.0/priv/alias": "data/1"}
    assert ("lib/kernel-8.5.3/ebin/kernel.beam" in rels) is not exclude
    assert plain[4] == (system_lib_prefixes() if exclude else ())


def test_async_scan_lets_the_event_loop_run(tmp_path: Path) -> None:
    root = _big_release(tmp_path / "demo")
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(ticker(stop))
        await scan_release_async(root)
        stop.set()
        await task

    asyncio.run(go())
    assert ticks >= 3  # at the start, after loading the cache, every SCAN_STEP files


class _FakeTarget:
    """Answers read_state's calls; records whether the scan was done when asked."""

    label = "fake"

    def __init__(self, local: LocalScan, block: asyncio.Event | None = None) -> None:
        self.local = local
        self.block = block
        self.scan_done_when_asked: list[bool] = []
        self.cancelled = False

    async def read(
        self, dest: str, exclude: Sequence[str], rw: str | None, lock: str | None = None
    ) -> Readout:
        scan = self.local._scan
        self.scan_done_when_asked.append(scan is not None and scan.done())
        assert tuple(exclude) == self.local.exclude_prefixes
        if self.block is not None:
            try:
                await self.block.wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        return Readout(
            info=TargetInfo("25", "fake@host", ("/srv/erlang/lib/demo-0.1.0/ebin",)),
            original={"bin/demo": RemoteFile("bin/demo", 10, 0o755, b"x" * 32)},
            shadow={},
            code=CodeState({}, frozenset()),
            top=[],
            libs=[],
        )


def test_the_target_is_asked_before_the_scan_ends(tmp_path: Path) -> None:
    local = LocalScan(_big_release(tmp_path / "demo"), exclude_system_libs=True)
    target = _FakeTarget(local)

    async def go() -> None:
        release, state = await scan_while_reading(target, local, SyncOptions())  # type: ignore[arg-type]
        assert "lib/demo-0.1.0/ebin/demo.beam" in release.files
        assert set(state.original) == {"bin/demo"} and state.dest == "/srv/erlang"
        assert release is await local.release()  # scanned once, whoever asks

    asyncio.run(go())
    assert target.scan_done_when_asked == [False]


def test_a_failing_scan_stops_the_reading(tmp_path: Path) -> None:
    local = LocalScan(tmp_path / "missing", exclude_system_libs=True)

    async def go() -> _FakeTarget:
        target = _FakeTarget(local, block=asyncio.Event())
        with pytest.raises(FileNotFoundError):
            await scan_while_reading(target, local, SyncOptions())  # type: ignore[arg-type]
        return target

    assert asyncio.run(go()).cancelled


def _file(rel: bytes, size: int, mode: int, digest: bytes) -> bytes:
    head = struct.pack(">BI", 0, len(rel))
    return head + rel + struct.pack(">QHB", size, mode, len(digest)) + digest


def _link(rel: bytes, target: bytes) -> bytes:
    return struct.pack(">BI", 1, len(rel)) + rel + struct.pack(">I", len(target)) + target


def test_unpack_manifest() -> None:
    digest = bytes(range(32))
    temp = "lib/a/priv/.relsync-tmp.x.part"
    blob = (
        _file(b"bin/start", 5, 0o755, digest)
        + _file(b"lib/a/priv/.relsync-tmp.x.part", 3, 0o644, b"")  # a temp file: no hash
        + _file(b"lib/caf\xe9", 1 << 40, 0o600, digest)  # not UTF-8
        + _link(b"lib/a/priv/link", b"../ebin/a.beam")
    )
    assert unpack_manifest(blob) == {
        "bin/start": RemoteFile("bin/start", 5, 0o755, digest),
        temp: RemoteFile(temp, 3, 0o644, b""),
        "lib/caf\udce9": RemoteFile("lib/caf\udce9", 1 << 40, 0o600, digest),
        "lib/a/priv/link": RemoteLink("lib/a/priv/link", "../ebin/a.beam"),
    }
    assert unpack_manifest(b"") == {}


@pytest.mark.parametrize(
    "blob",
    [
        _file(b"bin/start", 5, 0o755, bytes(32))[:-1],  # cut short
        _link(b"a", b"b")[:7],
        b"\x07" + _link(b"a", b"b")[1:],  # an unknown kind of entry
    ],
)
def test_unpack_manifest_refuses_malformed_data(blob: bytes) -> None:
    with pytest.raises(TargetError, match="malformed manifest"):
        unpack_manifest(blob)
