"""Compile Erlang sources with the host's ``erlc``: hook files and relsync's target helper."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from relsync.errors import UsageError
from relsync.release import default_cache_dir

_PACKAGE_ERLANG = Path(__file__).parent / "erlang"


async def compile_erl(source: Path, outdir: Path) -> bytes:
    """Compile ``source`` into ``outdir`` and return the beam; compiler errors are verbatim."""
    import shutil  # here: a sync that compiles nothing does not need it at start-up

    erlc = shutil.which("erlc")
    if erlc is None:
        raise UsageError(
            f"cannot compile {source}: erlc is not installed "
            "(apt-get install erlang-nox, or give an already compiled module name)"
        )
    outdir.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        erlc,
        "+deterministic",
        "-o",
        str(outdir),
        str(source),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    if proc.returncode != 0:
        text = output.decode(errors="replace").rstrip()
        raise UsageError(f"{source} does not compile; fix it and retry:\n{text}")
    return (outdir / (source.stem + ".beam")).read_bytes()


async def helper_beam(module: str) -> bytes:
    """The beam of one of relsync's own target-side modules (prebuilt, else compiled once)."""
    source = _PACKAGE_ERLANG / f"{module}.erl"
    prebuilt = _PACKAGE_ERLANG / "ebin" / f"{module}.beam"
    if prebuilt.is_file() and (
        not source.is_file() or prebuilt.stat().st_mtime >= source.stat().st_mtime
    ):
        return prebuilt.read_bytes()
    included = b"".join(p.read_bytes() for p in sorted(_PACKAGE_ERLANG.glob("*.hrl")))
    digest = hashlib.sha256(source.read_bytes() + included).hexdigest()[:16]
    cached = default_cache_dir() / "ebin" / digest / f"{module}.beam"
    if cached.is_file():
        return cached.read_bytes()
    return await compile_erl(source, cached.parent)
