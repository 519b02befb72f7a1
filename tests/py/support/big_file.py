"""A release with one big priv file, and copies of it with that file edited (delta transfer).

Shared by ``tests/py/integration/test_sync_delta.py`` and ``bench/delta_bench.py``.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from relsync.harness.example import APP_DIR

#: The big file, relative to the release root.
BIG = f"{APP_DIR}/priv/big.bin"
#: Its size: 10 MiB.
SIZE = 10 << 20


def random_bytes(size: int, seed: int) -> bytes:
    """``size`` reproducible pseudo-random (incompressible) bytes."""
    return random.Random(seed).randbytes(size)


def changed(data: bytes, at: int, nbytes: int = 1024, seed: int = 1) -> bytes:
    """``data`` with the ``nbytes`` from ``at`` replaced by other bytes (same size)."""
    return data[:at] + random_bytes(nbytes, seed) + data[at + nbytes :]


def with_big_file(release: Path, root: Path, content: bytes) -> Path:
    """A copy of ``release`` at ``root`` whose :data:`BIG` holds ``content``."""
    shutil.copytree(release, root, symlinks=True)
    (root / BIG).write_bytes(content)
    return root


def write_changed_pair(old: Path, new: Path, size: int, at: int, nbytes: int = 1024) -> None:
    """Write ``size`` pseudo-random bytes to ``old`` and the same with the ``nbytes`` from
    ``at`` changed (within the MiB holding ``at``) to ``new``, a MiB at a time: for files too
    big to build in memory."""
    rng, piece = random.Random(size), 1 << 20
    with old.open("wb") as old_out, new.open("wb") as new_out:
        for start in range(0, size, piece):
            data = rng.randbytes(min(piece, size - start))
            old_out.write(data)
            if start <= at < start + len(data):
                edit = at - start
                data = changed(data, edit, min(nbytes, len(data) - edit))
            new_out.write(data)
