"""``--build`` moves what the build wrote a second back, so a save made in the same second
as the beams still looks newer to rebar3 and mix."""

from __future__ import annotations

import os
import time
from pathlib import Path

from relsync.build import backdate_outputs


def test_outputs_of_this_build_move_back_a_second(tmp_path: Path) -> None:
    lib = tmp_path / "_build" / "default" / "lib"
    ebin = lib / "demo" / "ebin"
    ebin.mkdir(parents=True)
    (tmp_path / "src").mkdir()
    source = tmp_path / "src" / "demo.erl"
    source.write_text("-module(demo).")
    (lib / "demo" / "src").symlink_to(tmp_path / "src")
    old = ebin / "old.beam"
    old.write_bytes(b"old")
    os.utime(old, (1_000_000, 1_000_000))
    started = int(time.time())
    new = ebin / "demo.beam"
    new.write_bytes(b"new")
    manifest = lib / "demo" / ".mix" / "compile.elixir"
    manifest.parent.mkdir()
    manifest.write_bytes(b"m")
    source_mtime = source.stat().st_mtime_ns

    backdate_outputs(lib, started)

    assert new.stat().st_mtime == manifest.stat().st_mtime == started - 1
    assert old.stat().st_mtime == 1_000_000  # older than the build: left alone
    assert source.stat().st_mtime_ns == source_mtime  # not followed into the sources
