"""``--build``: make the release with the project's own tool before syncing it.

rebar3 (``rebar3 [as PROFILE] release [-n RELNAME]``) for a project with ``rebar.config``,
mix (``MIX_ENV=PROFILE mix release [RELNAME] --overwrite``) for one with ``mix.exs``. The
tool's output goes to stderr as it prints it; a failed build sends nothing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

from relsync.errors import UsageError

if TYPE_CHECKING:
    from relsync.fastbuild import FastBuild

#: ``--watch``'s fast path while a watch runs (see :mod:`relsync.fastbuild`).
FAST_PATH: ContextVar[FastBuild | None] = ContextVar("relsync_fast_path", default=None)


def build_command(
    project: Path, profile: str | None, relname: str | None
) -> tuple[list[str], dict[str, str], Path]:
    """The build command for ``project``, its environment, and where its releases go."""
    env = dict(os.environ)
    if (project / "rebar.config").is_file():
        command = ["rebar3", *(["as", profile] if profile else []), "release"]
        command += ["-n", relname] if relname else []
        return command, env, project / "_build" / (profile or "default") / "rel"
    if (project / "mix.exs").is_file():
        env["MIX_ENV"] = profile or env.get("MIX_ENV") or "prod"
        command = ["mix", "release", *([relname] if relname else []), "--overwrite"]
        return command, env, project / "_build" / env["MIX_ENV"] / "rel"
    raise UsageError(
        f"--build: no rebar.config or mix.exs in {project}; run relsync in the project, or "
        "build the release yourself and give it with --local-path"
    )


async def build_release(project: Path, profile: str | None, relname: str | None) -> Path:
    """Build the project's release; return the directory holding it (in a watch, the fast
    path's when it can: see :mod:`relsync.fastbuild`)."""
    command, env, out = build_command(project, profile, relname)
    fast = FAST_PATH.get()
    if fast is not None and (release := await fast.build(project, out, relname)) is not None:
        return release
    if shutil.which(command[0]) is None:
        raise UsageError(f"--build: {command[0]} is not installed (apt-get install {command[0]})")
    print(f"relsync: building: {' '.join(command)}", file=sys.stderr, flush=True)
    started = int(time.time())
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=project, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=sys.stderr.fileno(), stderr=sys.stderr.fileno(),
    )  # fmt: skip
    code = await proc.wait()
    if code != 0:
        raise UsageError(
            f"the build failed ({command[0]} exited {code}, its output is above); fix it, "
            "nothing was sent"
        )
    backdate_outputs(out.parent / "lib", started)
    releases = sorted(p for p in out.glob("*") if (p / "releases").is_dir())
    if relname:
        releases = [p for p in releases if p.name == relname]
    if len(releases) != 1:
        found = ", ".join(p.name for p in releases) or "none"
        raise UsageError(f"--build made releases in {out}: {found}; choose one with --relname")
    if fast is not None:
        fast.built()
    return releases[0].resolve()


def backdate_outputs(lib: Path, started: int) -> None:
    """Give what a build wrote below ``lib`` (beams, compile manifests) an mtime a second
    before the build began.

    rebar3 and mix compare mtimes in whole seconds: a source saved in the same second as the
    beams were written looks older than them and is not recompiled, which in watch mode (rounds
    well under a second) loses the save. Sources saved since the build began stay newer.
    """
    earlier = started - 1
    for root, _dirs, files in os.walk(lib):  # not into rebar3's links back to the sources
        for name in files:
            path = os.path.join(root, name)
            stat = os.lstat(path)
            if stat.st_mtime >= started and not os.path.islink(path):
                os.utime(path, (stat.st_atime, earlier))
