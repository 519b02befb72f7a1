"""A plan's file operations carried out on a target: deletions, writes, links. The beams of
modules new to the target go first, so that the VM loads them while the rest is written."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from relsync.target import ModuleResult, Progress, Target

if TYPE_CHECKING:
    from relsync.engine import SyncReport


async def apply_files(
    target: Target, report: SyncReport, count: Progress, *, load_early: bool
) -> None:
    """Delete, write and link as ``report.plan`` says (with ``load_early``, the modules the VM
    has no code of are loaded meanwhile: their results go in ``report.modules``)."""
    plan = report.plan
    # Deletions first: a symlink or file that must give way to a directory (or the other way
    # round) is gone before anything is written through its path.
    if plan.delete_paths:
        await target.delete_files(plan.delete_paths)
    if plan.delete_dirs:
        stuck = await target.delete_dirs(plan.delete_dirs)
        report.warnings += [f"directory not empty, left in place: {d}" for d in stuck]
    if plan.writes:
        report.deltas = sorted(await _write(target, report, count, load_early))
    if plan.links:
        await target.make_symlinks(plan.links)


async def _write(
    target: Target, report: SyncReport, count: Progress, load_early: bool
) -> list[str]:
    """Write the plan's files; the paths that went as a delta. Loading early, the beams of new
    modules are written first, and loaded as they land while the other files are written: the
    VM has no code of them, so nothing runs them yet and nothing sees them change."""
    plan = report.plan
    new = set(plan.new_modules)
    fresh = {path: (module, path, sha) for module, path, sha in plan.reload if module in new}
    if not (load_early and fresh):
        return await target.put_files(plan.writes, count)
    loads = _FreshLoads(target, fresh)
    loading = asyncio.ensure_future(loads.run())
    try:
        first = [put for put in plan.writes if put.path in fresh]
        deltas = await target.put_files(first, count, loads.written)
        rest = [put for put in plan.writes if put.path not in fresh]
        deltas += await target.put_files(rest, count, loads.written)
    except BaseException:
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        raise
    loads.finish()
    report.modules += await loading
    return deltas


class _FreshLoads:
    """Loads new modules as their beams land: what landed while one call was on its way goes
    in the next (so the VM loads many together), until the writes are done."""

    def __init__(self, target: Target, fresh: dict[str, tuple[str, str, bytes]]) -> None:
        self._target, self._fresh = target, fresh
        self._landed: list[tuple[str, str, bytes]] = []
        self._wake = asyncio.Event()
        self._finished = False

    def written(self, paths: Sequence[str]) -> None:
        """A :data:`~relsync.target.Written`: these paths are in place."""
        self._landed += [self._fresh[p] for p in paths if p in self._fresh]
        self._wake.set()

    def finish(self) -> None:
        """Every file is written: load what is left, then stop."""
        self._finished = True
        self._wake.set()

    async def run(self) -> list[ModuleResult]:
        """Load until :meth:`finish`; the modules' results."""
        results: list[ModuleResult] = []
        while self._landed or not self._finished:
            if not self._landed:
                await self._wake.wait()
                self._wake.clear()
                continue
            landed, self._landed = self._landed, []
            results += await self._target.load_fresh(landed)
        return results
