"""Drive ``relsync --watch`` as a developer does: save a source as an editor would, read the
line each round prints, Ctrl-C at the end. Used by the watch tests and the benchmark."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from relsync.harness.client import Target, cli_argv

#: The longest a round (a build and a sync) may take before a caller gives up.
ROUND_LIMIT = 120.0


def save(path: Path, old: str, new: str) -> float:
    """Replace ``old`` by ``new`` in ``path`` as an editor saves (a lock file, then a temporary
    file renamed over the source, both of which watch mode must ignore); return the time of
    the save (``time.monotonic``)."""
    lock = path.parent / f".#{path.name}"
    lock.write_text("lock")
    text = path.read_text()
    if old not in text:
        raise ValueError(f"{old!r} not in {path}")
    tmp = path.parent / f".{path.name}.new"
    tmp.write_text(text.replace(old, new, 1))
    saved = time.monotonic()
    os.replace(tmp, path)
    lock.unlink()
    return saved


def watch_argv(board: Target, mode: str, rw_path: str | Path, *args: str) -> list[str]:
    """``relsync --watch`` against ``board`` into its shadow tree ``rw_path``, run inside the
    project (``--build`` finds the release, so no ``--local-path``)."""
    argv = cli_argv(board, Path("."), "-q", str(rw_path), "--watch", *args, mode=mode)
    at = argv.index("-l")
    return argv[:at] + argv[at + 2 :]


class WatchRun:
    """``relsync --watch`` running in a project:
    ``async with WatchRun(argv, project) as run: await run.round()``."""

    def __init__(self, argv: Sequence[str], project: Path, env: dict[str, str] | None = None):
        self._argv = list(argv)
        self._project = project
        self._env = env
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr: asyncio.Future[bytes] | None = None
        #: What the command printed on stderr (build output, errors), once it ended.
        self.stderr = ""

    async def __aenter__(self) -> WatchRun:
        self._proc = await asyncio.create_subprocess_exec(
            *self._argv, cwd=self._project, env=self._env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self._proc.stderr is not None
        self._stderr = asyncio.ensure_future(self._proc.stderr.read())  # or the builds block
        return self

    async def line(self, limit: float = ROUND_LIMIT) -> str:
        """The next line on stdout."""
        assert self._proc is not None and self._proc.stdout is not None
        raw = await asyncio.wait_for(self._proc.stdout.readline(), limit)
        if not raw:
            code = await self.stop()
            raise RuntimeError(f"relsync --watch ended early (exit {code}):\n{self.stderr}")
        return raw.decode().strip()

    async def round(self, limit: float = ROUND_LIMIT) -> str:
        """The next round's line (``... -> N/M board(s): ...``, or a build failure)."""
        while True:
            line = await self.line(limit)
            if " -> " in line:
                return line

    async def started(self) -> str:
        """The first round's line, once the watcher is watching."""
        first = await self.round()
        watching = await self.line()
        if "watching" not in watching:
            raise RuntimeError(f"expected the watching line, got {watching!r}")
        return first

    async def stop(self) -> int:
        """Ctrl-C; the exit code (stderr is then in :attr:`stderr`)."""
        assert self._proc is not None and self._stderr is not None
        if self._proc.returncode is None:
            self._proc.send_signal(signal.SIGINT)
        try:
            code = await asyncio.wait_for(self._proc.wait(), 30)
        except TimeoutError:
            self._proc.kill()
            code = await self._proc.wait()
        self.stderr = (await self._stderr).decode(errors="replace")
        return code

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
