"""Give a board ssh mode when its release does not include relsyncd: start it beside the release.

The relsyncd application (``relsyncd/`` in this repository) is compiled once by its build.sh; a
running node gets its ebin and OTP's ssh, public_key and asn1 on its code path, then a daemon on
127.0.0.1 that trusts one key pair generated for the board.
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from relsync.erldist.etf import Atom, Charlist, Term
from relsync.erldist.pretty import format_term
from relsync.harness.bundle import harness_root
from relsync.harness.ready import BoardError

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
    """Compile relsyncd (quick when up to date); return its ebin directory."""
    proc = await asyncio.create_subprocess_exec(
        str(harness_root() / "relsyncd" / "build.sh"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise BoardError(f"building relsyncd failed:\n{out.decode(errors='replace')}")
    return harness_root() / "relsyncd" / "ebin"


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


async def _target_ebins(rpc: Rpc, extra_libs: Sequence[str] = ()) -> list[str]:
    """The ebin dirs of OTP's asn1, public_key and ssh (and crypto, for a release without
    it) on the board: beside its ERTS, else in ``extra_libs``."""
    bindir = await rpc("os", "getenv", [Charlist("BINDIR")])
    if not isinstance(bindir, str):
        raise BoardError("the board's VM has no BINDIR; cannot find OTP's libraries")
    erts = posixpath.dirname(bindir)
    link = await rpc("file", "read_link_all", [Charlist(erts)])  # a release may link to ERTS
    if isinstance(link, tuple) and link[0] == "ok" and isinstance(link[1], str):
        erts = posixpath.normpath(posixpath.join(posixpath.dirname(erts), link[1]))
    libs = [posixpath.join(posixpath.dirname(erts), "lib"), *extra_libs]
    has_crypto = isinstance(await rpc("code", "lib_dir", [Atom("crypto")]), str)
    found: list[str] = []
    for app in SSH_APPS if has_crypto else ("crypto", *SSH_APPS):
        dirs: Term = []
        for lib in libs:
            dirs = await rpc("filelib", "wildcard", [Charlist(f"{lib}/{app}-*/ebin")])
            if isinstance(dirs, list) and dirs:
                break
        if not (isinstance(dirs, list) and dirs):
            package = "erlang-" + app.replace("_", "-")
            raise BoardError(f"the board has no OTP {app} in {libs[0]}; install {package}")
        found.append(str(sorted(str(d) for d in dirs)[-1]))
    return found


async def start_relsyncd(
    rpc: Rpc,
    *,
    key_dir: Path,
    ebin: str,
    allowed_paths: list[str],
    host_key_dir: str,
    port: int = 0,
    listen_any: bool = False,
    public_port: int | None = None,
    extra_libs: Sequence[str] = (),
) -> SshAccess:
    """Start relsyncd (its ebin at ``ebin`` on the board) beside the release behind ``rpc``.

    It listens on ``port`` (0: any free one) on 127.0.0.1, or on every interface with
    ``listen_any`` (a container, reached through a published port ``public_port``), and trusts
    one key pair kept in ``key_dir`` on this machine. OTP libraries relsyncd needs that the
    board's own OTP lacks (a release with its own ERTS and without them) come from
    ``extra_libs``.
    """
    identity, public = ensure_key(key_dir)
    dirs = [ebin, *await _target_ebins(rpc, extra_libs)]
    added = await rpc("code", "add_pathsz", [[Charlist(d) for d in dirs]])
    if added != "ok":
        raise BoardError(f"the board refused relsyncd's code path: {format_term(added)}")
    # Boards run in embedded mode: nothing loads on demand, so load every module now.
    modules: list[Term] = []
    for directory in dirs:
        beams = await rpc("filelib", "wildcard", [Charlist("*.beam"), Charlist(directory)])
        assert isinstance(beams, list)
        modules += [Atom(str(b)[: -len(".beam")]) for b in beams]
    loaded = await rpc("code", "ensure_modules_loaded", [modules])
    # Modules with an on_load function are refused in bulk in embedded mode: load them singly.
    retry = loaded[1] if isinstance(loaded, tuple) and isinstance(loaded[1], list) else []
    for failed in retry:
        assert isinstance(failed, tuple)
        single = await rpc("code", "load_file", [failed[0]])
        if not (isinstance(single, tuple) and single[0] == "module"):
            what = f"{format_term(failed[0])}: {format_term(single)}"
            raise BoardError(f"the board could not load {what}")
    started = await rpc("application", "ensure_all_started", [Atom("ssh")])
    if not (isinstance(started, tuple) and started[0] == "ok"):
        raise BoardError(f"the board could not start ssh: {format_term(started)}")
    config: dict[Term, Term] = {
        Atom("ssh_port"): port,
        Atom("ip"): Atom("any") if listen_any else (127, 0, 0, 1),
        Atom("host_key_dir"): host_key_dir.encode(),
        Atom("authorized_keys"): f"{host_key_dir}/authorized_keys".encode(),
        Atom("authorized_public_keys"): [public.encode()],
        Atom("allowed_paths"): [p.encode() for p in allowed_paths],
    }
    result = await rpc("relsyncd", "start_daemon", [config])
    if not (isinstance(result, tuple) and result[0] == "ok"):
        raise BoardError(f"relsyncd did not start on the board: {format_term(result)}")
    answer = await rpc("relsyncd", "port", [result[1]])
    if not (isinstance(answer, tuple) and answer[0] == "ok" and isinstance(answer[1], int)):
        raise BoardError(f"relsyncd has no port: {format_term(answer)}")
    return SshAccess(public_port or answer[1], "relsync", identity, key_dir / "known_hosts")
