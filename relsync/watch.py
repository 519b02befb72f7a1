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
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TextIO

from relsync.engine import SyncReport
from relsync.errors import RelsyncError

#: Directories whose changes are never sources.
IGNORED_DIRS = frozenset({"_build", "_rel", "deps", ".git", ".hg", ".svn", ".elixir_ls"})
#: What is watched below a project (rebar3 links _build/*/lib/APP/src back to src, so the
#: project's top directory itself is not watched: its changes would come through _build).
#: Not the lock files: every build writes them.
SOURCES = ("src", "include", "lib", "c_src", "priv", "config", "rel", "rebar.config", "mix.exs")
#: Milliseconds of quiet before a round starts (an editor saves in several steps).
DEBOUNCE_MS = 300


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
        or name.endswith(("~", ".swp", ".swo", ".swx", ".tmp", ".bak"))
        or name == "4913"  # vim's probe file
    )


def _inotify_works() -> bool:
    return sys.platform == "linux" and os.path.isdir("/proc/sys/fs/inotify")


def round_line(what: str, reports: list[SyncReport], seconds: float) -> str:
    """The one line a round prints."""
    failed = [r for r in reports if r.exit_code]
    loaded = sorted({m.module for r in reports for m in r.modules if m.status == "loaded"})
    done = f"reloaded {', '.join(loaded)}" if loaded else "nothing to reload"
    boards = f"{len(reports) - len(failed)}/{len(reports)} board(s)"
    line = f"relsync: {what} -> {boards}: {done} ({seconds * 1000:.0f} ms)"
    return line + "".join(f"; {r.label}: {r.error}" for r in failed)


async def watch(
    root: Path, sync_round: Callable[[], Awaitable[list[SyncReport]]], out: TextIO = sys.stdout
) -> None:
    """Sync once, then again after every change of the sources below ``root``, for ever
    (Ctrl-C ends it)."""
    from watchfiles import awatch  # here: a run without --watch does not load it

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

    watched = [root / name for name in SOURCES if (root / name).exists()]
    changes = awatch(
        *watched,
        watch_filter=lambda _change, path: is_source_change(root, path),
        debounce=DEBOUNCE_MS,
        force_polling=not _inotify_works(),
    )
    # Watching starts before the first round: a save made during any round is kept by the
    # watcher and starts the next one.
    pending = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0)  # the generator sets its watcher up before its first wait
    try:
        await one("start")
        say(f"relsync: watching {root} (Ctrl-C ends)")
        while True:
            batch = await pending
            pending = asyncio.ensure_future(anext(changes))
            await one(f"{_changed(root, batch)} changed")
    finally:
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending
        await changes.aclose()


def _changed(root: Path, batch: Iterable[tuple[object, str]]) -> str:
    names = sorted({str(Path(p).relative_to(root)) for _, p in batch})
    return ", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")
