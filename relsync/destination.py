"""Where on the board the release is: the one its VM was booted from, unless told otherwise."""

from __future__ import annotations

import posixpath

from relsync.errors import UsageError
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
