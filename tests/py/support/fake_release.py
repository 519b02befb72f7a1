"""A small fake release tree on disk, for tests that only scan files."""

from __future__ import annotations

import os
from pathlib import Path


def make_release(root: Path) -> Path:
    files = {
        "lib/demo-0.1.0/ebin/demo.beam": b"beam",
        "lib/demo-0.1.0/ebin/demo.app": b"{application, demo, []}.",
        "lib/demo-0.1.0/priv/port": b"#!/bin/sh\n",
        "lib/demo-0.1.0/priv/nif.so": b"\x7fELF",
        "lib/kernel-8.5.3/ebin/kernel.beam": b"k",
        "lib/stdlib-4.2/ebin/lists.beam": b"l",
        "erts-13.1/bin/beam.smp": b"vm",
        "releases/0.1.0/demo.rel": b'{release, {"demo", "0.1.0"}, {erts, "13.1"}, []}.',
        "releases/start_erl.data": b"13.1 0.1.0\n",
        "bin/demo": b"#!/bin/sh\n",
        "log/erlang.log.1": b"not synced",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.chmod(root / "lib/demo-0.1.0/priv/port", 0o755)
    return root


def deep_tree(top: Path, levels: int = 25) -> None:
    """Directories nested past PATH_MAX below ``top`` (made by descriptor, as a build could),
    a file at the bottom: a path no scan can open, whoever runs it."""
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(levels):
            os.mkdir("d" * 200, dir_fd=fd)
            inner = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
