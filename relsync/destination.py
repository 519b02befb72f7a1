"""Where on the board the release is: the one its VM was booted from, unless told otherwise."""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from pathlib import Path

from relsync.errors import RelsyncError, UsageError
from relsync.target import Target


async def release_destination(target: Target, given: str | None, force: bool) -> str:
    """The release path to sync on ``target``: ``given`` (``-p``), else the root of the
    release the VM runs. A ``given`` path that is not that release is refused unless ``force``:
    writing there would change nothing the VM runs."""
    if given is not None and force:
        return given
    running = (await target.info()).release_root
    if given is None:
        if running is None:
            raise UsageError(
                f"{target.label} was not booted from a release (no ROOT/releases/VSN boot "
                "script), so there is no release path to default to: pass -p PATH"
            )
        return running
    if running is not None and posixpath.normpath(given) != posixpath.normpath(running):
        raise UsageError(
            f"-p {given} is not the release {target.label} runs ({running}); leave -p out to "
            f"sync that one, or add --force-path to write {given} anyway"
        )
    return given


#: Name prefix of the directory :func:`runs_local_release` makes for a moment.
PROBE_PREFIX = ".relsync-probe."


async def runs_local_release(target: Target, dest: str, local: Path) -> bool:
    """Whether the release at ``dest`` on ``target`` is the local release's own directory (the
    VM runs the very tree relsync syncs from, as with rebar3's dev-mode release run from
    ``_build``): then there is nothing to copy, and a write would land in the project.

    A path proves nothing (another machine may have the same one), so when ``dest`` names the
    local release, a directory with a random name is made in it for a moment and the target
    is asked to list it: only the same directory, seen through any path, has it."""
    if os.path.realpath(dest) != os.path.realpath(local):
        return False
    try:
        probe = Path(tempfile.mkdtemp(prefix=PROBE_PREFIX, dir=local))
    except OSError:  # a read-only release: relsync could not write into it either
        return False
    try:
        probe.chmod(0o755)  # listed by a VM running as another user too
        (probe / "probe").touch()
        seen = await target.read(f"{dest.rstrip('/')}/{probe.name}", (), None)
    except RelsyncError:  # e.g. relsyncd confines it elsewhere: not the same directory
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return "probe" in seen.original
