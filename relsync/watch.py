"""``relsync --watch``: rebuild and sync every board each time the sources change.

Sources are watched with inotify through ``watchfiles`` (polling where inotify is absent),
debounced, without build output (``_build``), version control or editor temporary files. Each
round prints one line: what changed, what was reloaded, how long it took. A build that fails
is shown as the tool printed it and leaves the boards alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeAlias

from relsync.engine import SyncReport
from relsync.errors import RelsyncError
from relsync.fastbuild import warm_compiler
from relsync.words import modules

if TYPE_CHECKING:  # watchfiles is imported only in a run with --watch
    from watchfiles import Change

#: Directories whose changes are never sources.
IGNORED_DIRS = frozenset({"_build", "_rel", "deps", ".git", ".hg", ".svn", ".elixir_ls"})
#: What is watched below a project (rebar3 links _build/*/lib/APP/src back to src, so the
#: project's top directory itself is not watched: its changes would come through _build).
#: Not the lock files: every build writes them.
SOURCES = ("src", "include", "lib", "c_src", "priv", "config", "rel", "rebar.config", "mix.exs")
#: Milliseconds of quiet before a round starts (an editor saves in several steps).
DEBOUNCE_MS = 300
#: ``sed -i``'s temporary file: ``sed`` and six letters or digits.
_SED_TEMP = re.compile(r"sed[A-Za-z0-9]{6}")


def is_source_change(root: Path, path: str) -> bool:
    """Whether a change at ``path`` (below ``root``) is worth a round: not build output, not
    version control, not an editor's temporary or backup file."""
    try:
        parts = Path(path).relative_to(root).parts
    except ValueError:
        return False
    if not parts or any(p in IGNORED_DIRS or p.startswith(".") for p in parts[:-1]):
        return False
    name = parts[-1]
    return not (
        name.startswith((".", "#"))
        or name.endswith(("~", ".swp", ".swo", ".swx", ".tmp", ".bak", "___jb_tmp___"))
        or name == "4913"  # vim's probe file
        or _SED_TEMP.fullmatch(name)  # sed -i's file, renamed over the source
    )


def _inotify_works() -> bool:
    return sys.platform == "linux" and os.path.isdir("/proc/sys/fs/inotify")


def round_line(what: str, reports: list[SyncReport], seconds: float) -> str:
    """The one line a round prints."""
    failed = [r for r in reports if r.exit_code]
    loaded = sorted({m.module for r in reports for m in r.modules if m.status == "loaded"})
    done = f"reloaded {modules(loaded)}" if loaded else "nothing to reload"
    boards = f"{len(reports) - len(failed)}/{len(reports)} board(s)"
    line = f"relsync: {what} -> {boards}: {done} ({seconds * 1000:.0f} ms)"
    return line + "".join(f"; {r.label}: {r.error}" for r in failed)


async def watch(
    root: Path, sync_round: Callable[[], Awaitable[list[SyncReport]]], out: TextIO = sys.stdout
) -> None:
    """Sync once, then again after every change of the sources below ``root``, for ever
    (Ctrl-C ends it)."""

    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    async def one(what: str) -> None:
        started = time.perf_counter()
        try:
            reports = await sync_round()
        except RelsyncError as exc:
            say(f"relsync: {what} -> {exc}; boards left alone, save again once it is fixed")
            return
        say(round_line(what, reports, time.perf_counter() - started))

    # Watching starts before the first round: a save made during any round is kept by the
    # watcher and starts the next one.
    sources = _Sources(root)
    await asyncio.sleep(0)  # the generators set their watchers up before their first wait
    try:
        async with warm_compiler(root):  # a changed module is compiled there, not rebuilt
            await one("start")
            say(f"relsync: watching {root} (Ctrl-C ends)")
            while True:
                batch = await sources.next()
                await one(f"{_changed(root, batch)} changed")
    finally:
        await sources.close()


Batch: TypeAlias = "set[tuple[Change, str]]"


class _Sources:
    """Changes of the sources below ``root``: its top directory (``rebar.config``, and source
    directories made or removed, as a branch switch does) and each source directory there is.
    A source directory made again is watched again."""

    def __init__(self, root: Path) -> None:
        self._root = root
        top = frozenset(SOURCES)
        self._top = self._awatch([root], recursive=False,
                                 only=lambda path: Path(path).name in top)  # fmt: skip
        self._top_next = asyncio.ensure_future(anext(self._top))
        self._watched: list[Path] = []
        self._dirs: AsyncGenerator[Batch, None] | None = None
        self._dirs_next: asyncio.Future[Batch] | None = None
        self._open_dirs()

    def _awatch(
        self, paths: list[Path], *, recursive: bool, only: Callable[[str], bool]
    ) -> AsyncGenerator[Batch, None]:
        from watchfiles import awatch  # here: a run without --watch does not load it

        return awatch(
            *paths,
            watch_filter=lambda _change, path: only(path) and is_source_change(self._root, path),
            debounce=DEBOUNCE_MS,
            force_polling=not _inotify_works(),
            recursive=recursive,
        )

    def _source_dirs(self) -> list[Path]:
        return [self._root / name for name in SOURCES if (self._root / name).is_dir()]

    def _open_dirs(self) -> None:
        self._watched = self._source_dirs()
        self._dirs, self._dirs_next = None, None
        if self._watched:
            self._dirs = self._awatch(self._watched, recursive=True, only=lambda _path: True)
            self._dirs_next = asyncio.ensure_future(anext(self._dirs))

    async def _close_dirs(self) -> None:
        if self._dirs_next is not None and self._dirs is not None:
            self._dirs_next.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dirs_next
            await self._dirs.aclose()

    async def next(self) -> Batch:
        """The next batch of changes (waits for one)."""
        waiting = [f for f in (self._top_next, self._dirs_next) if f is not None]
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        batch: Batch = set()
        if self._dirs_next in done and self._dirs is not None:
            batch |= self._dirs_next.result()
            self._dirs_next = asyncio.ensure_future(anext(self._dirs))
        if self._top_next in done:
            batch |= self._top_next.result()
            self._top_next = asyncio.ensure_future(anext(self._top))
            if self._source_dirs() != self._watched:
                await self._close_dirs()
                self._open_dirs()
        return batch

    async def close(self) -> None:
        """Stop watching."""
        await self._close_dirs()
        self._top_next.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._top_next
        await self._top.aclose()


def _changed(root: Path, batch: Iterable[tuple[object, str]]) -> str:
    names = sorted({str(Path(p).relative_to(root)) for _, p in batch})
    return ", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")
