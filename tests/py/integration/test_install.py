"""``pip install .`` from a fresh checkout gives a relsync that syncs (its helper compiled by
the build, not left behind as build output of ``make erlang``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import cli_argv
from support.local_board import with_board

from relsync.harness.example import Variant
from relsync.harness.local import LocalBoard

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHECKOUT = Path(__file__).resolve().parents[3]


def fresh_checkout(where: Path) -> Path:
    """The files git tracks, as the working tree has them (a clone of uncommitted work): no
    beams, no egg-info, nothing ``make`` wrote."""
    if not (CHECKOUT / ".git").exists():
        pytest.skip(
            f"{CHECKOUT} is not a git checkout (an installed copy of the tests): the install "
            "test copies the files git tracks; CI runs from a clone, where it always runs"
        )
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=CHECKOUT, check=True, capture_output=True
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source, copy = CHECKOUT / name, where / name
        if not source.is_symlink() and not source.exists():
            continue  # deleted in the working tree
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, copy, follow_symlinks=False)
    return where


def test_pip_install_dot_syncs_a_board(demo_release: Path, tmp_path: Path) -> None:
    clone = fresh_checkout(tmp_path / "clone")
    assert not list(clone.rglob("*.beam"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", "."], cwd=clone, env=env,
        capture_output=True, text=True,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)

    async def body(board: LocalBoard) -> None:
        argv = cli_argv(board, v2.root, "-q", str(board.rw_path), mode="erl")
        done = subprocess.run(
            [str(venv / "bin/relsync"), *argv[3:]], cwd=tmp_path, env=env,
            capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "demo_counter" in done.stdout
        assert await board.rpc("demo_counter", "version", []) == 2

    with_board(demo_release, tmp_path / "board", body)
