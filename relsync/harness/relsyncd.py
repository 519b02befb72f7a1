"""Give a board ssh mode when its release does not include relsyncd: start it beside the release.

The relsyncd application (``relsyncd/`` in this repository) is compiled once with rebar3; a
running node gets its ebin and OTP's ssh, public_key and asn1 on its code path, then a daemon on
127.0.0.1 that trusts one key pair generated for the board.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from relsync.dist.etf import Atom, Charlist, Term
from relsync.dist.pretty import format_term

REPO = Path(__file__).resolve().parents[2]
RELSYNCD = REPO / "relsyncd"
OTP_LIB = Path("/usr/lib/erlang/lib")
SSH_APPS = ("asn1", "public_key", "ssh")

Rpc = Callable[[str, str, list[Term]], Awaitable[Term]]


@dataclass(frozen=True, slots=True)
class SshAccess:
    """How to reach a board's relsyncd (all on 127.0.0.1)."""

    port: int
    user: str
    identity: Path
    known_hosts: Path


async def build_relsyncd() -> Path:
    """Compile relsyncd with rebar3 (quick when up to date); return its ebin directory."""
    proc = await asyncio.create_subprocess_exec(
        "rebar3", "compile", cwd=RELSYNCD,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"rebar3 compile of relsyncd failed:\n{out.decode(errors='replace')}")
    return RELSYNCD / "_build" / "default" / "lib" / "relsyncd" / "ebin"


def ensure_key(workdir: Path) -> tuple[Path, str]:
    """An ECDSA key pair for the board's user (created once): private key path, public line."""
    private = workdir / "id_ecdsa"
    if not private.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        key = asyncssh.generate_private_key("ecdsa-sha2-nistp256", comment="relsync-board")
        key.write_private_key(str(private))
        private.chmod(0o600)
    public = asyncssh.read_private_key(str(private)).export_public_key().decode().strip()
    return private, public


async def start_relsyncd(
    rpc: Rpc,
    *,
    workdir: Path,
    allowed_paths: list[Path],
    host_key_dir: Path,
    port: int = 0,
) -> SshAccess:
    """Start relsyncd on the node behind ``rpc`` (``port`` 0: any free one); say how to reach it."""
    ebin = await build_relsyncd()
    identity, public = ensure_key(workdir)
    dirs = [ebin]
    for app in SSH_APPS:
        found = sorted(OTP_LIB.glob(f"{app}-*/ebin"))
        if not found:
            package = "erlang-" + app.replace("_", "-")
            raise RuntimeError(f"OTP's {app} is not installed; apt-get install {package}")
        dirs.append(found[-1])
    added = await rpc("code", "add_pathsz", [[Charlist(str(d)) for d in dirs]])
    if added != "ok":
        raise RuntimeError(f"the board refused relsyncd's code path: {format_term(added)}")
    # Boards run in embedded mode: nothing loads on demand, so load every module now.
    modules: list[Term] = [Atom(b.stem) for d in dirs for b in sorted(d.glob("*.beam"))]
    loaded = await rpc("code", "ensure_modules_loaded", [modules])
    # Modules with an on_load function are refused in bulk in embedded mode: load them singly.
    retry = loaded[1] if isinstance(loaded, tuple) and isinstance(loaded[1], list) else []
    for failed in retry:
        assert isinstance(failed, tuple)
        single = await rpc("code", "load_file", [failed[0]])
        if not (isinstance(single, tuple) and single[0] == "module"):
            what = f"{format_term(failed[0])}: {format_term(single)}"
            raise RuntimeError(f"the board could not load {what}")
    started = await rpc("application", "ensure_all_started", [Atom("ssh")])
    if not (isinstance(started, tuple) and started[0] == "ok"):
        raise RuntimeError(f"the board could not start ssh: {format_term(started)}")
    config: dict[Term, Term] = {
        Atom("ssh_port"): port,
        Atom("ip"): (127, 0, 0, 1),
        Atom("host_key_dir"): str(host_key_dir).encode(),
        Atom("authorized_keys"): str(host_key_dir / "authorized_keys").encode(),
        Atom("authorized_public_keys"): [public.encode()],
        Atom("allowed_paths"): [str(p).encode() for p in allowed_paths],
    }
    result = await rpc("relsyncd", "start_daemon", [config])
    if not (isinstance(result, tuple) and result[0] == "ok"):
        raise RuntimeError(f"relsyncd did not start on the board: {format_term(result)}")
    answer = await rpc("relsyncd", "port", [result[1]])
    if not (isinstance(answer, tuple) and answer[0] == "ok" and isinstance(answer[1], int)):
        raise RuntimeError(f"relsyncd has no port: {format_term(answer)}")
    return SshAccess(answer[1], "relsync", identity, workdir / "known_hosts")
