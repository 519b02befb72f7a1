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
