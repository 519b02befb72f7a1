"""relsync next to ``rsync -az`` over OpenSSH on a board's real link, side by side in one run.

One docker-otp board (with OpenSSH's sshd for rsync) is reached through :class:`bench.link.Link`
at 100 Mbit/s with 2 ms of one-way delay (USB gadget Ethernet) and at 20 Mbit/s with 5 ms
(Wi-Fi), every connection of every tool through it: relsync in erl mode (EPMD and the
distribution port), relsync in ssh mode (relsyncd), relsync in erl mode uncompressed
(``RELSYNC_COMPRESS=never``, as before compression, for reference) and rsync -az. Each tool
syncs its own copy of a release of some of this machine's OTP applications (``-E false``, in
place, into directories of its own on the board's ``/data``):

* bulk first sync into a new directory (the board's VM has loaded every module already, at a
  warm-up sync: this is the transfer, which a slow link makes the cost);
* one changed beam: relsync has reloaded it, rsync only copied it.

Each figure is a median of rounds interleaved over the tools, the ratio to rsync the median of
each round's own ratio; the bytes on the wire are what the link carried both ways.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.compare_bench import BOARD_TIMEOUT_S, CLI_TIMEOUT_S, host_otp
from bench.link import Link
from bench.sync_bench import QUICK_APPS, _compile_probe, _make_release, installed_env
from bench.table import Row
from relsync.harness.docker import DockerBoard, example_release

#: (Mbit/s, one-way delay in ms): USB gadget Ethernet, Wi-Fi.
LINKS = ((100.0, 2.0), (20.0, 5.0))
#: The release: about 25 MB of OTP applications (a quick run: a couple of MB).
APPS = ("stdlib", "kernel", "compiler", "tools", "syntax_tools", "parsetools", "sasl")
ROUNDS = 3
TOOLS = ("relsync erl", "relsync ssh", "relsync erl uncompressed", "rsync -az")
#: The tool measured for reference only: erl mode as before compression.
UNCOMPRESSED = "relsync erl uncompressed"


@dataclass(frozen=True, slots=True)
class Sample:
    """One run: wall time and the bytes the link carried."""

    wall: float
    wire: int


async def _run(argv: list[str], env: dict[str, str]) -> dict[str, object]:
    """Run ``argv`` to its end in this event loop (the link runs beside it); relsync's report."""
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    if proc.returncode not in (0, 6):
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed ({proc.returncode}): {err.decode()}")
    report: dict[str, object] = json.loads(out)["boards"][0] if out.startswith(b"{") else {}
    return report


async def _commands(
    board: DockerBoard, link: Link, work: Path
) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each tool's command line through ``link`` (the destination and release follow)."""
    assert board.ssh is not None and board.openssh is not None
    env = installed_env(work / "pycache")
    relsync = [sys.executable, "-m", "relsync.cli", "-E", "false", "--json", "--force-path"]
    ssh, sshd = board.ssh, board.openssh
    known = work / f"known_hosts-{link.mbit:.0f}"
    erl = [*relsync, "-d", board.node, "--epmd-port", str(await link.epmd(board.epmd_port))]
    relsyncd = [*relsync, "-M", "ssh", "-d", "127.0.0.1", "-P", str(await link.forward(ssh.port)),
                "-u", ssh.user, "-i", str(ssh.identity), "--known-hosts", str(known),
                "--accept-new-host-key"]  # fmt: skip
    shell = (
        f"ssh -p {await link.forward(sshd.port)} -i {sshd.identity} -o IdentitiesOnly=yes"
        f" -o BatchMode=yes -o UserKnownHostsFile={known}-openssh"
        " -o StrictHostKeyChecking=accept-new"
    )
    return {
        "relsync erl": (erl, dict(env, RELSYNC_COOKIE=board.cookie)),
        UNCOMPRESSED: (erl, dict(env, RELSYNC_COOKIE=board.cookie, RELSYNC_COMPRESS="never")),
        "relsync ssh": (relsyncd, env),
        "rsync -az": (["rsync", "-az", "-e", shell], dict(os.environ, RSYNC_BENCH_USER=sshd.user)),
    }


async def _sync(
    commands: dict[str, tuple[list[str], dict[str, str]]], tool: str, local: Path, dest: str,
    link: Link,
) -> Sample:  # fmt: skip
    argv, env = commands[tool]
    if tool.startswith("rsync"):
        argv = [*argv, f"{local}/", f"{env['RSYNC_BENCH_USER']}@127.0.0.1:{dest}/"]
    else:
        argv = [*argv, "-p", dest, "-l", str(local)]
    link.reset()
    started = time.perf_counter()
    await _run(argv, env)
    return Sample(time.perf_counter() - started, link.up + link.down)


def _probe(tool: str) -> str:
    return "relsync_link_probe_" + tool.split()[-1].replace("-", "")


async def _measure(work: Path, quick: bool) -> list[Row]:
    rounds, apps = (1, QUICK_APPS) if quick else (ROUNDS, APPS)
    base = _make_release(work / "base", apps)
    nbytes = sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
    nfiles = sum(1 for p in base.rglob("*") if p.is_file())
    locals_ = {tool: work / f"rel-{n}" for n, tool in enumerate(TOOLS)}
    for tool, local in locals_.items():
        shutil.copytree(base, local, symlinks=True)
        _compile_probe(local, 1, work, _probe(tool))
    otp = host_otp()
    board = await asyncio.wait_for(
        DockerBoard.start(await example_release(otp), otp=otp, workdir=work / "boards",
                          ssh=True, openssh=True),
        BOARD_TIMEOUT_S,
    )  # fmt: skip
    bulk: dict[tuple[float, str], list[Sample]] = {}
    one: dict[tuple[float, str], list[Sample]] = {}
    version = 2
    try:
        fast = Link(10_000.0, 0.0)  # the warm-up: every module loaded once, at loopback speed
        warm = await _commands(board, fast, work)
        await board.exec("mkdir", "-p", "/data/warm")
        await _sync(warm, "relsync erl", locals_["relsync erl"], "/data/warm", fast)
        for mbit, delay in LINKS:
            link = Link(mbit, delay)
            commands = await _commands(board, link, work)
            dests = {tool: f"/data/link{mbit:.0f}-{n}" for n, tool in enumerate(TOOLS)}
            for r in range(rounds):
                for tool in TOOLS:
                    dest = f"{dests[tool]}-{r}"
                    await board.exec("mkdir", "-p", dest)
                    sample = await _sync(commands, tool, locals_[tool], dest, link)
                    bulk.setdefault((mbit, tool), []).append(sample)
            for _ in range(rounds):
                for tool in TOOLS:
                    _compile_probe(locals_[tool], version, work, _probe(tool))
                    dest = f"{dests[tool]}-{rounds - 1}"
                    sample = await _sync(commands, tool, locals_[tool], dest, link)
                    one.setdefault((mbit, tool), []).append(sample)
                version += 1
            await link.close()
        await fast.close()
    finally:
        await board.stop()

    rows: list[Row] = []
    release = f"{nfiles} files, {nbytes / 1e6:.0f} MB"
    for mbit, delay in LINKS:
        for label, samples in ((f"bulk first sync ({release})", bulk),
                               ("one changed beam", one)):  # fmt: skip
            rs = samples[mbit, "rsync -az"]
            rs_wall = statistics.median(s.wall for s in rs)
            rs_wire = statistics.median(s.wire for s in rs)
            erl = samples[mbit, "relsync erl"]
            for tool in TOOLS[:3]:
                ours = samples[mbit, tool]
                judged = tool != UNCOMPRESSED
                vs_erl = statistics.median(o.wall / e.wall for o, e in zip(ours, erl, strict=True))
                wall = statistics.median(s.wall for s in ours)
                wire = statistics.median(s.wire for s in ours)
                ratio = statistics.median(o.wall / t.wall for o, t in zip(ours, rs, strict=True))
                rows.append(
                    Row("link", f"{mbit:.0f} Mbit/s + {delay:.0f} ms: {label}, {tool} (median "
                        f"of {rounds})", f"{wall:.2f} s = {ratio:.2f}x rsync, {_size(wire)} on "
                        "the wire", f"rsync -az over OpenSSH {rs_wall:.2f} s, {_size(rs_wire)}"
                        + (f"; {vs_erl:.2f}x erl mode" if tool != "relsync erl" else "")
                        + ("" if judged else "; as before compression, for reference"),
                        "<= 1.0x rsync" if judged else "", ratio <= 1.0 if judged else None)
                )  # fmt: skip
    return rows


def _size(nbytes: float) -> str:
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e6 else f"{nbytes / 1e3:.0f} kB"


def run(quick: bool = False) -> list[Row]:
    """Start one board, measure through each link, stop it; return the table rows (``quick``:
    a small release, one round)."""
    with tempfile.TemporaryDirectory(prefix="relsync-bench-link-") as tmp:
        return asyncio.run(_measure(Path(tmp), quick))
