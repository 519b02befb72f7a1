"""The files the harness runs: board recipes (``targets/``), ``scripts/``, ``relsyncd/`` and the
example project (``examples/``), laid out as in the source repository.

In a checkout, ``relsync/harness/bundle/`` holds symlinks to the repository's own directories
and the harness works there. An installed wheel carries copies as package data; their first use
unpacks them into ``$XDG_CACHE_HOME/relsync/harness/VERSION-DIGEST`` (the scripts build images,
releases and relsyncd beside themselves, which a site-packages directory is not meant for).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from importlib import metadata, resources
from pathlib import Path

from relsync.release import default_cache_dir

#: The top-level directories of the repository the harness needs.
PARTS = ("examples", "relsyncd", "scripts", "targets")
#: Written last by ``relsyncd/build.sh``: marks its shipped ebin as up to date with src.
RELSYNCD_STAMP = Path("relsyncd") / "ebin" / "relsyncd.app"


def _packaged() -> Path:
    bundle = resources.files("relsync.harness").joinpath("bundle")
    if not isinstance(bundle, Path) or not bundle.is_dir():
        raise RuntimeError(
            "relsync's harness files are missing from this installation; "
            "reinstall relsync from its wheel or use a source checkout"
        )
    return bundle


def _digest(bundle: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        sha.update(str(path.relative_to(bundle)).encode() + b"\0")
        sha.update(path.read_bytes())
    return sha.hexdigest()[:12]


def _unpack(bundle: Path) -> Path:
    version = metadata.version("relsync")
    root = default_cache_dir() / "harness" / f"{version}-{_digest(bundle)}"
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root.parent))
    try:
        for part in PARTS:
            if (bundle / part).is_dir():
                shutil.copytree(bundle / part, tmp / part)
        stamp = tmp / RELSYNCD_STAMP
        if stamp.is_file():  # installers do not keep mtimes: the shipped ebin matches src
            os.utime(stamp)
        try:
            tmp.rename(root)
        except OSError:  # another process unpacked it first
            if not root.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


@functools.cache
def harness_root() -> Path:
    """The directory holding ``targets/``, ``scripts/``, ``relsyncd/`` and ``examples/``."""
    bundle = _packaged()
    if (bundle / "targets").is_symlink():  # a source checkout
        return (bundle / "targets").resolve().parent
    return _unpack(bundle)
