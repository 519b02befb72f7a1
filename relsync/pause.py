"""Deterministic pause points, for the fault tests that kill relsync mid-sync.

With ``RELSYNC_PAUSE_AT=NAME`` in its environment, a sync that reaches the point ``NAME`` says
``relsync: paused at NAME`` on stderr and waits there until it is killed. The points:
``files_replaced`` (every file written and renamed into place, no module reloaded yet) and
``reloaded`` (the new code loaded, the postsync hook not run yet); in ``--rollback --clean``,
``shadow_files_deleted`` (the shadow tree's files deleted, its directories not yet).
"""

from __future__ import annotations

import asyncio
import os
import sys


async def pause_point(name: str) -> None:
    """Stop here for good when ``RELSYNC_PAUSE_AT`` names this point; else return at once."""
    if os.environ.get("RELSYNC_PAUSE_AT") != name:
        return
    sys.stderr.write(f"relsync: paused at {name}\n")
    sys.stderr.flush()
    await asyncio.Event().wait()
