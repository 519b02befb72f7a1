"""Finding and scanning the local release."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.fake_release import make_release

from relsync.errors import UsageError
from relsync.release import FileKind, find_release, scan_release, sha256_file

BEAM = "lib/demo-0.1.0/ebin/demo.beam"


def test_scan_classifies_and_skips(tmp_path: Path) -> None:
    rel = scan_release(make_release(tmp_path / "demo"))
    assert (rel.name, rel.version) == ("demo", "0.1.0")
    kinds = {r: f.kind for r, f in rel.files.items()}
    assert kinds == {
        "lib/demo-0.1.0/ebin/demo.beam": FileKind.BEAM,
        "lib/demo-0.1.0/ebin/demo.app": FileKind.APP,
        "lib/demo-0.1.0/priv/port": FileKind.PORT,
        "releases/0.1.0/demo.rel": FileKind.OTHER,
        "releases/start_erl.data": FileKind.OTHER,
        "bin/demo": FileKind.OTHER,
    }
    skipped = {s.rel: s.reason for s in rel.skipped}
    assert "shared library" in skipped["lib/demo-0.1.0/priv/nif.so"]
    assert {"lib/kernel-8.5.3", "lib/stdlib-4.2", "erts-13.1"} <= skipped.keys()
    assert {"lib/kernel-", "lib/stdlib-", "erts-"} <= set(rel.exclude_prefixes)
    assert not any("demo" in p for p in rel.exclude_prefixes)
    port = rel.files["lib/demo-0.1.0/priv/port"]
    assert port.mode == 0o755 and port.digest == sha256_file(port.path)


def test_scan_with_system_libs(tmp_path: Path) -> None:
    rel = scan_release(make_release(tmp_path / "demo"), exclude_system_libs=False)
    assert "lib/kernel-8.5.3/ebin/kernel.beam" in rel.files
    assert "erts-13.1/bin/beam.smp" not in rel.files  # the running VM is its ERTS
    assert rel.exclude_prefixes == ()
    assert [s.rel for s in rel.skipped] == ["erts-13.1", "lib/demo-0.1.0/priv/nif.so"]
    assert "ERTS: the running VM cannot switch" in rel.skipped[0].reason  # said, not silent


def test_find_release_prefers_the_single_built_one(tmp_path: Path) -> None:
    built = make_release(tmp_path / "_build/prod/rel/demo")
    assert find_release(None, tmp_path) == built.resolve()
    make_release(tmp_path / "_build/dev/rel/demo")
    with pytest.raises(UsageError, match="several releases"):
        find_release(None, tmp_path)


def test_find_release_falls_back_to_rel_dir(tmp_path: Path) -> None:
    make_release(tmp_path / "_rel/demo")
    assert find_release(None, tmp_path) == (tmp_path / "_rel/demo").resolve()


def test_find_release_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--local-path"):
        find_release(None, tmp_path)
    (tmp_path / "notarel").mkdir()
    with pytest.raises(UsageError, match="not an Erlang release"):
        find_release("notarel", tmp_path)
    with pytest.raises(UsageError, match="no such directory"):
        find_release("missing", tmp_path)


def test_hash_cache_sees_a_rewrite_that_keeps_size_and_mtime(tmp_path: Path) -> None:
    # Build tools copy mtimes in whole seconds (relx) and --build moves them back: a beam
    # rewritten in place, same size, same mtime, must still be hashed again.
    root = make_release(tmp_path / "demo")
    beam = root / "lib/demo-0.1.0/ebin/demo.beam"
    before = beam.stat()
    first = scan_release(root, cache_dir=tmp_path / "cache").files[BEAM].digest
    beam.write_bytes(bytes(b ^ 0xFF for b in beam.read_bytes()))
    os.utime(beam, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert beam.stat().st_ino == before.st_ino and beam.stat().st_size == before.st_size
    again = scan_release(root, cache_dir=tmp_path / "cache").files[BEAM].digest
    assert again != first and again == sha256_file(str(beam))
    cached = scan_release(root, cache_dir=tmp_path / "cache").files[BEAM].digest
    assert cached == again
