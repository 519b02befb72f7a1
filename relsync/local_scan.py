"""The local release, scanned once for every board of a run, while the boards are read."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relsync.engine import SyncOptions, read_state
from relsync.plan import TargetState
from relsync.release import (
    LocalRelease,
    default_cache_dir,
    hashed_as,
    scan_release_async,
    system_lib_prefixes,
)
from relsync.target import Target


class LocalScan:
    """The local release, scanned once however many boards need it: the first board to ask
    starts the scan, the others wait for the same one."""

    def __init__(
        self, root: Path, exclude_system_libs: bool, copy_unsafe_links: bool = False
    ) -> None:
        self.root = root
        self.exclude_system_libs = exclude_system_libs
        self.copy_unsafe_links = copy_unsafe_links
        #: What the scan will leave out, known before it runs (so the target can be asked).
        self.exclude_prefixes = system_lib_prefixes() if exclude_system_libs else ()
        self._scan: asyncio.Future[LocalRelease] | None = None
        self._rehashed: dict[str, asyncio.Future[LocalRelease]] = {}

    async def release(self) -> LocalRelease:
        """The scanned release."""
        if self._scan is None:
            self._scan = asyncio.ensure_future(
                scan_release_async(
                    self.root,
                    exclude_system_libs=self.exclude_system_libs,
                    cache_dir=default_cache_dir(),
                    copy_unsafe_links=self.copy_unsafe_links,
                )
            )
        return await asyncio.shield(self._scan)  # one board giving up does not stop it

    async def hashed_as(self, algorithm: str) -> LocalRelease:
        """The scanned release with digests as a target hashing with ``algorithm`` computes
        them (computed once for all such boards)."""
        release = await self.release()
        if algorithm not in self._rehashed:
            self._rehashed[algorithm] = asyncio.ensure_future(hashed_as(release, algorithm))
        return await asyncio.shield(self._rehashed[algorithm])


async def scan_while_reading(
    target: Target, local: LocalScan, options: SyncOptions
) -> tuple[LocalRelease, TargetState]:
    """Scan the local release while the target lists its own files: the requests go out
    first, the scan lets the event loop run now and then, and the replies are read meanwhile.
    The release comes hashed as the target hashes files."""
    reading = asyncio.ensure_future(read_state(target, local.exclude_prefixes, options))
    try:
        await local.release()
    except BaseException:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        raise
    state = await reading
    return await local.hashed_as(state.hash), state
