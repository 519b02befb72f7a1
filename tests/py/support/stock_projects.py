"""Projects as the generators make them, unedited: ``rebar3 new release NAME`` and
``mix new NAME --sup``, and their first build."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from relsync.build import backdate_outputs
from support.mix_project import mix_env


def rebar3_env(base: Path) -> dict[str, str]:
    """An environment for rebar3 whose home (caches, templates) is below ``base``."""
    home = base / "home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "HOME": str(home)}


def first_build(command: list[str], project: Path, env: dict[str, str], lib: Path) -> None:
    """The user's first build, its outputs dated before it began, as if the edits that follow
    came seconds later (the tools compare mtimes in whole seconds)."""
    started = int(time.time())
    subprocess.run(command, cwd=project, env=env, check=True, capture_output=True)
    backdate_outputs(lib, started)


def rebar3_release(base: Path, *profile: str) -> Path:
    """``rebar3 new release myapp`` in ``base``, built (``rebar3 [as PROFILE] release``);
    the project's path."""
    env = rebar3_env(base)
    subprocess.run(["rebar3", "new", "release", "myapp"], cwd=base, env=env, check=True,
                   capture_output=True)  # fmt: skip
    project = base / "myapp"
    lib = project / "_build" / (profile[-1] if profile else "default") / "lib"
    first_build(["rebar3", *(["as", *profile] if profile else []), "release"], project, env, lib)
    return project


def mix_release(base: Path) -> Path:
    """``mix new myex --sup`` in ``base``, built (``MIX_ENV=prod mix release``); the project."""
    env = mix_env(base)
    subprocess.run(["mix", "new", "myex", "--sup"], cwd=base, env=env, check=True,
                   capture_output=True)  # fmt: skip
    project = base / "myex"
    first_build(["mix", "release"], project, env, project / "_build" / "prod" / "lib")
    return project
