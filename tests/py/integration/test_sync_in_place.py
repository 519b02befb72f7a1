"""Syncing into a writable release directory (no shadow tree), against a plain node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support.erlnode import ErlNode, run_async

from relsync.erldist.etf import Atom
from relsync.harness.example import APP_DIR, Variant, build_example_release

pytestmark = pytest.mark.integration


def relsync(node: ErlNode, dest: Path, local: Path, *args: str) -> tuple[int, dict[str, object]]:
    argv = [sys.executable, "-m", "relsync.cli", "-d", node.node, "-p", str(dest),
            "-l", str(local), "--json", *args]  # fmt: skip
    env = dict(os.environ, RELSYNC_COOKIE=node.cookie, ERL_EPMD_PORT=str(node.epmd_port))
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    if not done.stdout:
        return done.returncode, {"err": done.stderr}
    return done.returncode, json.loads(done.stdout)["boards"][0]


def test_in_place_sync_writes_loads_and_deletes(
    make_erl_node: Callable[..., ErlNode], tmp_path: Path
) -> None:
    base = build_example_release()
    dest = tmp_path / "dest"
    shutil.copytree(base, dest, symlinks=True)
    extra = "-module(demo_extra).\n-export([hello/0]).\nhello() -> world.\n"
    v2 = Variant(base, tmp_path / "v2").counter_version(2).compile("demo_extra", extra)
    node = make_erl_node()
    node.wait_ready()
    # ERL_EPMD_PORT in the environment is honoured (no --epmd-port given).
    code, report = relsync(node, dest, v2.root)
    assert code == 0, report
    assert report["added"] == [f"{APP_DIR}/ebin/demo_extra.beam"]
    assert report["changed"] == [f"{APP_DIR}/ebin/demo_counter.beam"]
    assert report["root"] == str(dest)
    assert (dest / APP_DIR / "ebin/demo_counter.beam").read_bytes() == (
        v2.ebin / "demo_counter.beam"
    ).read_bytes()
    assert not list(dest.rglob(".relsync-tmp.*"))
    assert run_async(node.call("demo_extra", "hello", [])) == "world"
    which = run_async(node.call("code", "which", [Atom("demo_extra")]))
    assert which == str(dest / APP_DIR / "ebin/demo_extra.beam")
    # Back to the base release: the extra module is deleted from disk and from the VM.
    code, report = relsync(node, dest, base)
    assert code == 0, report
    assert report["deleted"] == [f"{APP_DIR}/ebin/demo_extra.beam"]
    assert not (dest / APP_DIR / "ebin/demo_extra.beam").exists()
    assert run_async(node.call("code", "is_loaded", [Atom("demo_extra")])) == "false"
