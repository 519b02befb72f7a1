"""Modules the VM has no code of are loaded while the other files are still being written
(relsync/transfer.py); the rest is loaded once every file is in place."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from support.erlnode import ErlNode, run_async

from relsync.engine import SyncOptions, SyncReport, sync
from relsync.erldist.etf import Atom
from relsync.harness.example import APP_DIR, Variant, build_example_release
from relsync.release import scan_release
from relsync.target import FilePut, ModuleResult, Progress, Written, nothing_written
from relsync.transports.erl import ErlTarget

pytestmark = pytest.mark.integration

BLOB = f"{APP_DIR}/priv/blob.bin"
BLOB_BYTES = 3 << 20  # several chunks: written after the beams, one call at a time


class _Logged(ErlTarget):
    """The real target, noting when files land and when modules are loaded."""

    events: list[tuple[str, tuple[str, ...]]]

    async def put_files(
        self, files: Sequence[FilePut], progress: Progress, written: Written = nothing_written
    ) -> list[str]:
        def landed(paths: Sequence[str]) -> None:
            self.events.append(("written", tuple(paths)))
            written(paths)

        return await super().put_files(files, progress, landed)

    async def load_fresh(self, modules: Sequence[tuple[str, str, bytes]]) -> list[ModuleResult]:
        self.events.append(("load_fresh", tuple(m for m, _, _ in modules)))
        return await super().load_fresh(modules)

    async def load_modules(
        self, modules: Sequence[tuple[str, str, bytes]], brutal: bool
    ) -> list[ModuleResult]:
        self.events.append(("load_modules", tuple(m for m, _, _ in modules)))
        return await super().load_modules(modules, brutal)


def _variant(tmp_path: Path, dest: Path) -> Variant:
    """demo_counter changed; demo_fresh new; demo_fresh_init new, with an on_load function
    that reads a new priv file (written after the beams)."""
    fresh = "-module(demo_fresh).\n-export([hello/0]).\nhello() -> world.\n"
    init = (
        "-module(demo_fresh_init).\n-export([size/0]).\n-on_load(init/0).\n"
        f'init() -> {{ok, Bin}} = file:read_file("{dest / BLOB}"),\n'
        "    persistent_term:put(?MODULE, byte_size(Bin)).\n"
        "size() -> persistent_term:get(?MODULE).\n"
    )
    variant = Variant(build_example_release(), tmp_path / "v2").counter_version(2)
    variant.compile("demo_fresh", fresh).compile("demo_fresh_init", init)
    (variant.root / BLOB).parent.mkdir(parents=True, exist_ok=True)
    (variant.root / BLOB).write_bytes(bytes(range(256)) * (BLOB_BYTES // 256))
    return variant


#: What the logged target saw: ("written", paths) and ("load_fresh" | "load_modules", modules).
Events = list[tuple[str, tuple[str, ...]]]


def _synced(
    make_erl_node: Callable[..., ErlNode], tmp_path: Path, *, upgrade: bool
) -> tuple[ErlNode, Path, SyncReport, Events]:
    """A node whose release (in place, at the returned path) was synced to :func:`_variant`."""
    dest = tmp_path / "dest"
    shutil.copytree(build_example_release(), dest, symlinks=True)
    variant = _variant(tmp_path, dest)
    node = make_erl_node()
    node.wait_ready()

    async def synced() -> tuple[SyncReport, Events]:
        target = await _Logged.open(node.node, node.cookie, epmd_port=node.epmd_port)
        target.events = []
        try:
            options = SyncOptions(dest_path=str(dest), upgrade=upgrade)
            return await sync(target, scan_release(variant.root), options), target.events
        finally:
            await target.close()

    report, events = run_async(synced())
    assert report.exit_code == 0, report.error
    return node, dest, report, events


def _module(path: str) -> str:
    return Path(path).stem


def test_new_modules_load_while_the_other_files_are_written(
    make_erl_node: Callable[..., ErlNode], tmp_path: Path
) -> None:
    node, dest, report, events = _synced(make_erl_node, tmp_path, upgrade=False)
    blob_landed = next(n for n, (kind, paths) in enumerate(events)
                       if kind == "written" and str(dest / BLOB) in paths)  # fmt: skip
    fresh_calls = [n for n, (kind, _) in enumerate(events) if kind == "load_fresh"]
    assert fresh_calls and fresh_calls[0] < blob_landed, events
    for n in fresh_calls:  # each loads only beams that had landed before it was called
        landed = {_module(p) for kind, paths in events[:n] if kind == "written" for p in paths}
        assert set(events[n][1]) <= landed, events
    early = {m for n in fresh_calls for m in events[n][1]}
    assert {"demo_fresh", "demo_fresh_init"} <= early
    assert "demo_counter" not in early  # the board has a beam of it: loaded at the end
    # The on_load module is refused early (its priv file may not be there yet) and loaded
    # at the end, when it is.
    [(_, last)] = [e for e in events if e[0] == "load_modules"]
    assert "demo_counter" in last and "demo_fresh_init" in last and "demo_fresh" not in last
    assert run_async(node.call("demo_fresh_init", "size", [])) == BLOB_BYTES
    assert run_async(node.call("demo_fresh", "hello", [])) == "world"
    which = run_async(node.call("code", "which", [Atom("demo_counter")]))
    assert which == str(dest / APP_DIR / "ebin/demo_counter.beam")
    # Every module is reported once, loaded.
    names = [m.module for m in report.modules]
    assert sorted(names) == sorted(set(names))
    assert {"demo_counter", "demo_fresh", "demo_fresh_init"} <= set(names)
    assert all(m.status == "loaded" for m in report.modules), report.modules


def test_an_upgrade_loads_nothing_early(
    make_erl_node: Callable[..., ErlNode], tmp_path: Path
) -> None:
    node, _, _, events = _synced(make_erl_node, tmp_path, upgrade=True)
    assert [e for e in events if e[0] in ("load_fresh", "load_modules")] == []
    assert run_async(node.call("demo_fresh", "hello", [])) == "world"
