"""relsyncd against an attacker on the board's network and a client holding the authorized key:
no stranger can lock the door, and the jail holds (issue 35).

One board with relsyncd beside its release (``LocalBoard.enable_ssh``) serves the module; tests
that need other settings start a second daemon in the same VM. Everything is driven by asyncssh
against the real daemon.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import stat
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
from support.control_channel import LEN, Channel, frame

from relsync.erldist.etf import Atom, Charlist, Pid, Term, term_to_binary
from relsync.harness.example import APP_DIR, Variant, build_example_release
from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration

SHA0 = bytes(32)


class Env:
    """The module's board, its event loop, and a directory outside every allowed path."""

    def __init__(self, loop: asyncio.AbstractEventLoop, board: LocalBoard, outside: Path) -> None:
        self.loop, self.board, self.outside = loop, board, outside

    def run(self, coro: object) -> object:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    @property
    def port(self) -> int:
        assert self.board.ssh is not None
        return self.board.ssh.port

    async def connect(self, port: int | None = None) -> asyncssh.SSHClientConnection:
        ssh = self.board.ssh
        assert ssh is not None
        return await asyncssh.connect(
            "127.0.0.1", port or ssh.port, username=ssh.user, client_keys=[str(ssh.identity)],
            known_hosts=None, agent_path=None,
        )  # fmt: skip

    async def daemon(self, **settings: Term) -> tuple[Term, int]:
        """A second relsyncd in the board's VM (the same key): its ref and port."""
        ssh = self.board.ssh
        assert ssh is not None
        keys = self.board.workdir / "data" / "relsyncd"
        config: dict[Term, Term] = {
            Atom("ssh_port"): 0,
            Atom("ip"): (127, 0, 0, 1),
            Atom("authorized_public_keys"): [_public_key(ssh.identity)],
            Atom("host_key_dir"): str(keys).encode(),
            Atom("authorized_keys"): str(keys / "authorized_keys").encode(),
            Atom("allowed_paths"): [str(self.board.release_path).encode(),
                                    str(self.board.rw_path).encode()],
            **{Atom(k): v for k, v in settings.items()},
        }  # fmt: skip
        started = await self.board.rpc("relsyncd", "start_daemon", [config])
        assert isinstance(started, tuple) and started[0] == "ok", started
        port = await self.board.rpc("relsyncd", "port", [started[1]])
        assert isinstance(port, tuple) and isinstance(port[1], int), port
        return started[1], port[1]

    def outside_tree(self) -> dict[str, bytes | str]:
        return _tree(self.outside)


def _public_key(identity: Path) -> bytes:
    return asyncssh.read_private_key(str(identity)).export_public_key()


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every entry below root: a file's bytes and mode, a link's target, a directory's mode."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            found[rel] = f"link:{os.readlink(path)}"
        elif stat.S_ISREG(info.st_mode):
            found[rel] = path.read_bytes() + f"|{info.st_mode:o}".encode()
        else:
            found[rel] = f"dir:{info.st_mode:o}"
    return found


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    loop = asyncio.new_event_loop()
    work = tmp_path_factory.mktemp("jail")
    outside = work / "outside"
    outside.mkdir()
    (outside / "secret").write_text("top secret\n")
    board = loop.run_until_complete(
        LocalBoard.start(build_example_release(), workdir=work / "board")
    )
    try:
        loop.run_until_complete(board.enable_ssh())
        board.rw_path.mkdir(parents=True, exist_ok=True)
        yield Env(loop, board, outside)
    finally:
        loop.run_until_complete(board.stop())
        loop.close()


def _relsync(env: Env, local: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    ssh = env.board.ssh
    assert ssh is not None
    argv = [sys.executable, "-m", "relsync.cli", "-M", "ssh", "-d", "127.0.0.1",
            "-P", str(ssh.port), "-p", str(env.board.release_path), "-q", str(env.board.rw_path),
            "-l", str(local), "-i", str(ssh.identity), "--accept-new-host-key",
            "--known-hosts", str(env.board.workdir / "jail_known_hosts"), *extra]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


# -- the door -----------------------------------------------------------------------------------


async def _half_open(port: int, count: int) -> list[asyncio.StreamWriter]:
    """Connections that never log in: half send a client banner, half nothing at all."""
    writers = []
    for n in range(count):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if n % 2:
            writer.write(b"SSH-2.0-stranger\r\n")
        writers.append(writer)
    return writers


def test_a_sync_goes_through_while_20_connections_hang_in_the_login(
    env: Env, tmp_path: Path
) -> None:
    v2 = Variant(build_example_release(), tmp_path / "v2").counter_version(2)

    async def hold() -> list[asyncio.StreamWriter]:
        return await _half_open(env.port, 20)

    writers = env.run(hold())
    assert isinstance(writers, list)
    try:
        run = _relsync(env, v2.root)
        assert run.returncode == 0, run.stderr
        assert env.run(env.board.rpc("demo_counter", "version")) == 2
    finally:
        for writer in writers:
            writer.close()


def test_a_connection_that_does_not_log_in_is_closed_and_only_logins_count(env: Env) -> None:
    """With max_sessions 1: five half-open connections take no place, the first login does,
    the second login is closed; a connection still logging in is closed at login_timeout."""

    async def go() -> None:
        ref, port = await env.daemon(max_sessions=1, login_timeout=1000)
        try:
            writers = await _half_open(port, 5)
            async with await env.connect(port) as first:
                chan = await Channel.open(first)
                assert await chan.call(1, "ping", []) == "pong"
                second = await env.connect(port)
                with pytest.raises((asyncssh.Error, OSError)):
                    await asyncio.wait_for(Channel.open(second), 30)
                second.close()
                assert await chan.call(2, "ping", []) == "pong"
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"SSH-2.0-stranger\r\n")
            # The daemon's banner, then nothing more: closed (EOF) well before OTP's 2 minutes.
            await asyncio.wait_for(reader.read(), 30)
            for w in [*writers, writer]:
                w.close()
        finally:
            await env.board.rpc("relsyncd", "stop_daemon", [ref])

    env.run(go())


# -- what a request may cost -------------------------------------------------------------------


def _compressed_ping(inflated: int) -> bytes:
    """{1, ping, [<<0:inflated/unit:8>>]} as a compressed external term."""
    inner = bytearray(b"h\x03a\x01w\x04pingl\x00\x00\x00\x01m") + LEN.pack(inflated)
    packer = zlib.compressobj(9)
    out = [packer.compress(bytes(inner))]
    zeros = bytes(1 << 20)
    for _ in range(inflated >> 20):
        out.append(packer.compress(zeros))
    out.append(packer.compress(b"j"))
    out.append(packer.flush())
    return b"\x83P" + LEN.pack(len(inner) + inflated + 1) + b"".join(out)


def test_a_compressed_request_is_refused_before_it_is_inflated(env: Env) -> None:
    body = _compressed_ping(64 << 20)
    assert len(body) < 1 << 20

    async def go() -> None:
        async with await env.connect() as conn:
            bomb, other = await Channel.open(conn), await Channel.open(conn)
            bomb.send(frame(body))
            await asyncio.wait_for(bomb.closed.wait(), 30)
            assert bomb.replies.empty()
            assert await other.call(1, "ping", []) == "pong"

    env.run(go())


def test_new_atoms_are_made_only_for_module_names_and_boundedly(env: Env, tmp_path: Path) -> None:
    tag = os.urandom(4).hex()
    source = tmp_path / f"rsd_jail_{tag}.erl"
    source.write_text(f"-module(rsd_jail_{tag}).\n-export([f/0]).\nf() -> ok.\n")
    subprocess.run(["erlc", "-o", str(tmp_path), str(source)], check=True)
    beam = (tmp_path / f"rsd_jail_{tag}.beam").read_bytes()
    many: list[Term] = [Atom(f"rsd_atom_{tag}_{n}") for n in range(100_000)]

    async def go() -> None:
        before = await env.board.rpc("erlang", "system_info", [Atom("atom_count")])
        assert isinstance(before, int)
        async with await env.connect() as conn:
            chan = await Channel.open(conn)
            assert await chan.call(1, "ping", [many]) == (
                Atom("error"), (Atom("new_atoms"), 100_000, 20_000)
            )  # fmt: skip
            assert await chan.call(2, "mark_pending", [many]) == (
                Atom("error"), (Atom("new_atoms"), 100_000, 20_000)
            )  # fmt: skip
            after = await env.board.rpc("erlang", "system_info", [Atom("atom_count")])
            assert isinstance(after, int) and after - before < 1000
            # A module the VM has never heard of still loads (relsync's new modules, hooks).
            module = Atom(f"rsd_jail_{tag}")
            loaded = await chan.call(3, "load_binary", [module, Charlist("m.erl"), beam])
            assert loaded == (Atom("module"), module)

    env.run(go())


async def _memory_while(env: Env, done: asyncio.Event) -> int:
    """The board VM's largest total memory seen (bytes) until ``done``, sampled every 0.1 s."""
    peak = 0
    while not done.is_set():
        total = await env.board.rpc("erlang", "memory", [Atom("total")])
        assert isinstance(total, int)
        peak = max(peak, total)
        await asyncio.sleep(0.1)
    return peak


def test_a_request_that_decodes_to_a_huge_heap_closes_its_channel(env: Env) -> None:
    """{1, ping, [[] x 15M]}: a 15 MiB frame (under max_frame, uncompressed) of 15M list
    cells (240 MB), refused as it decodes instead of copied to the worker."""
    count = 15 << 20
    body = b"\x83h\x03a\x01w\x04pingl" + LEN.pack(count) + b"j" * (count + 1)

    async def go() -> tuple[int, int]:
        base = await env.board.rpc("erlang", "memory", [Atom("total")])
        assert isinstance(base, int)
        async with await env.connect() as conn:
            bomb, other = await Channel.open(conn), await Channel.open(conn)
            done = asyncio.Event()
            sampler = asyncio.ensure_future(_memory_while(env, done))
            bomb.send(frame(body))
            try:
                await asyncio.wait_for(bomb.closed.wait(), 60)
            finally:
                done.set()
                peak = await sampler
            assert bomb.replies.empty()
            assert await other.call(1, "ping", []) == "pong"
        return base, peak

    measured = env.run(go())
    assert isinstance(measured, tuple)
    base, peak = measured
    assert peak - base < 100 << 20, (base >> 20, peak >> 20)


def test_block_signatures_takes_bounded_blocks(env: Env) -> None:
    """Blocks of 1 KiB to 1 MiB, at most 65536 of them: block size 1 took a GB for 4 MiB."""
    rw = env.board.rw_path
    small, sparse = rw / "blocks", rw / "sparse"
    small.write_bytes(os.urandom(64 << 10))
    with sparse.open("wb") as f:
        f.truncate((65536 + 1) * 1024)

    async def go() -> None:
        async with await env.connect() as conn:
            chan = await Channel.open(conn)
            name = str(small).encode()
            badarg = (Atom("error"), Atom("badarg"))
            assert await chan.call(1, "block_signatures", [name, 1]) == badarg
            assert await chan.call(2, "block_signatures", [name, 1023]) == badarg
            assert await chan.call(3, "block_signatures", [name, (1 << 20) + 1]) == badarg
            sums = await chan.call(4, "block_signatures", [name, 16384])
            assert isinstance(sums, tuple) and sums[0] == "ok"
            assert isinstance(sums[1], list) and len(sums[1]) == 4
            too_many = await chan.call(5, "block_signatures", [str(sparse).encode(), 1024])
            assert too_many == (Atom("error"), Atom("efbig"))

    try:
        env.run(go())
    finally:
        small.unlink()
        sparse.unlink()


def test_an_sftp_channel_holds_at_most_32_open_files(env: Env) -> None:
    """OTP's default of 1000 handles a channel ran the VM out of file descriptors."""
    path = env.board.rw_path / "handles"
    path.write_bytes(b"x")

    async def go() -> None:
        async with await env.connect() as conn:
            sftp = await conn.start_sftp_client()
            handles = [await sftp.open(str(path), "rb") for _ in range(32)]
            with pytest.raises(asyncssh.SFTPError):
                await sftp.open(str(path), "rb")
            await handles.pop().close()
            async with sftp.open(str(path), "rb") as f:
                assert await f.read() == b"x"  # type: ignore[comparison-overlap]
            for handle in handles:
                await handle.close()

    env.run(go())


# -- the jail -----------------------------------------------------------------------------------


def test_a_trailing_slash_names_the_link_not_where_it_leads(env: Env) -> None:
    rw = env.board.rw_path
    esc = rw / "esc"
    esc.symlink_to(env.outside)  # a link out, planted on the board
    before = env.outside_tree()
    slash = str(esc).encode() + b"/"
    data = b"pwned"
    sha = hashlib.sha256(data).digest()
    base = str(env.board.release_path / "releases" / "start_erl.data").encode()

    async def go() -> None:
        async with await env.connect() as conn:
            chan = await Channel.open(conn)
            calls: list[tuple[str, list[Term]]] = [
                ("put_chunk", [slash, 0, data]),
                ("put_chunk", [slash, 0, data, b""]),
                ("commit", [slash, 0o644, sha]),
                ("put_files", [[(slash, 0o644, data, sha)]]),
                ("put_delta", [slash, base, [data], 0o644, sha]),
                ("make_symlinks", [[(slash, str(rw / "elsewhere").encode())]]),
            ]
            for n, (function, args) in enumerate(calls):
                await chan.call(n, function, args)
                assert env.outside_tree() == before, function
                if not esc.is_symlink():  # replaced by what was written: plant it again
                    esc.unlink()
                    esc.symlink_to(env.outside)

    try:
        env.run(go())
    finally:
        esc.unlink()


def test_no_link_made_through_relsyncd_leads_out(env: Env) -> None:
    """Links made with make_symlinks or over SFTP point inside the allowed paths, so no swap
    of a checked directory for one of them leads out; SFTP moves files only."""
    rw, rel = env.board.rw_path, env.board.release_path
    base = rw / "links"
    base.mkdir()
    (base / "sub").mkdir()
    forbidden = (Atom("error"), Atom("forbidden"))
    out = [b"/tmp", str(env.outside).encode(), f"{rel}/../../..".encode(),
           f"{rel}/".encode(), b"../../../../../../../../tmp", f"{rw}/links/./sub".encode(),
           b"/"]  # fmt: skip

    async def go() -> None:
        async with await env.connect() as conn:
            chan = await Channel.open(conn)
            for n, target in enumerate(out):
                link = str(base / f"l{n}").encode()
                result = await chan.call(n, "make_symlinks", [[(link, target)]])
                assert isinstance(result, tuple) and result[:1] == forbidden[:1], target
                assert isinstance(result[1], tuple) and result[1][0] == "forbidden", target
                assert not (base / f"l{n}").is_symlink()
            # What relsync's shadow tree needs: the release (absolute), and inside (relative).
            good = [(base / "rel", str(rel / "releases").encode()),
                    (base / "sub" / "up", b"../rel/start_erl.data")]  # fmt: skip
            assert await chan.call(90, "make_symlinks",
                                   [[(str(p).encode(), t) for p, t in good]]) == "ok"  # fmt: skip
            assert (base / "sub" / "up").read_text() == (
                rel / "releases" / "start_erl.data"
            ).read_text()
            sftp = await conn.start_sftp_client()
            for away in ("/tmp", str(env.outside)):
                with pytest.raises(asyncssh.SFTPError):
                    await sftp.symlink(away, str(base / "s"))
            with pytest.raises(asyncssh.SFTPError):
                await sftp.rename(str(base / "sub"), str(rw / "moved"))
            with pytest.raises(asyncssh.SFTPError):
                await sftp.rename(str(base / "rel"), str(rw / "moved"))

    env.run(go())


def test_a_relative_link_has_dotdot_only_first(env: Env) -> None:
    """The kernel takes a ".." after a link from where that link leads: esc -> s/../../outside
    with s -> q looked inside as text and led out, and with a link swapped in under a checked
    path, reads and writes went anywhere. Such targets are refused; leading ".."s are not."""
    rw = env.board.rw_path
    deep = rw / "dots" / "d0" / "d1" / "d2" / "d3" / "d4" / "d5"
    q = rw / "dots" / "q"
    q.mkdir(parents=True)
    out = os.path.relpath(env.outside, q)  # ../../../../outside: out from q, inside from deep
    assert out.startswith("../../")
    forbidden = Atom("forbidden")

    async def go() -> None:
        async with await env.connect() as conn:
            chan = await Channel.open(conn)
            link = str(deep / "s").encode()
            assert await chan.call(1, "make_symlinks", [[(link, str(q).encode())]]) == "ok"
            for n, target in enumerate([f"s/{out}", f"s/../{out}", "s/../../d4/x", "s/./../y"]):
                esc = str(deep / f"esc{n}").encode()
                result = await chan.call(2 + n, "make_symlinks", [[(esc, target.encode())]])
                assert result == (Atom("error"), (forbidden, target.encode())), target
                assert not (deep / f"esc{n}").is_symlink()
            assert await chan.call(9, "make_symlinks", [[(str(deep / "up").encode(),
                                                         b"../../d3/./x")]]) == "ok"  # fmt: skip
        for path in (rw / "dots").rglob("*"):
            assert os.path.realpath(path).startswith(str(rw.resolve())), path

    env.run(go())


def test_a_release_link_with_dotdot_after_a_name_arrives_with_leading_dotdots(
    env: Env, tmp_path: Path
) -> None:
    """relsync sends a release's link as the place it leads to, relative to the link: ".."
    first, which relsyncd takes (sub/../../ebin arrives as ../ebin)."""
    v2 = Variant(build_example_release(), tmp_path / "v2").counter_version(2)
    priv = v2.root / APP_DIR / "priv"
    (priv / "sub").mkdir(parents=True)
    (priv / "odd").symlink_to("sub/../../ebin")
    run = _relsync(env, v2.root)
    assert run.returncode == 0, run.stderr
    assert os.readlink(env.board.rw_path / APP_DIR / "priv" / "odd") == "../ebin"


def test_a_write_below_a_dangling_link_fails_instead_of_spinning(env: Env) -> None:
    rw = env.board.rw_path

    async def go() -> None:
        async with await env.connect() as conn:
            chan = await Channel.open(conn)
            dang = str(rw / "dang").encode()
            nowhere = str(rw / "nowhere" / "x").encode()
            assert await chan.call(1, "make_symlinks", [[(dang, nowhere)]]) == "ok"
            below: list[tuple[str, list[Term]]] = [
                ("put_chunk", [dang + b"/f", 0, b"x"]),
                ("put_files", [[(dang + b"/g", 0o644, b"x", hashlib.sha256(b"x").digest())]]),
                ("make_symlinks", [[(dang + b"/h", str(rw).encode())]]),
            ]
            for n, (function, args) in enumerate(below, start=2):
                result = await chan.call(n, function, args)
                assert isinstance(result, tuple) and result[0] == "error", (function, result)

    env.run(go())


def test_the_daemons_own_secrets_are_refused_inside_the_allowed_paths(env: Env) -> None:
    """The harness's layout, as a board's default: the host key and authorized_keys in
    data/relsyncd, the VM's crash dump (it holds the cookie) in data, all of data allowed."""
    data = env.board.workdir / "data"
    keys = data / "relsyncd"
    key = keys / "ssh_host_ecdsa_key"
    authorized = keys / "authorized_keys"
    authorized.write_text("")
    dump = data / "erl_crash.dump"
    dump.write_text(f"=erl_crash_dump:0.5\nCookie\n{env.board.cookie}\n")
    crash_dump = Charlist("ERL_CRASH_DUMP")

    async def go() -> None:
        allowed: list[Term] = [str(data).encode(), str(env.board.release_path).encode()]
        was = await env.board.rpc("os", "getenv", [crash_dump])
        await env.board.rpc("os", "putenv", [crash_dump, Charlist(str(dump))])
        ref, port = await env.daemon(allowed_paths=allowed)
        try:
            async with await env.connect(port) as conn:
                sftp = await conn.start_sftp_client()
                for path in (key, authorized, dump):
                    with pytest.raises(asyncssh.SFTPError):
                        async with sftp.open(str(path), "rb") as f:
                            await f.read()
                    with pytest.raises(asyncssh.SFTPError):
                        async with sftp.open(str(path), "ab") as f:
                            await f.write(b"ssh-ed25519 AAAA intruder\n")
                    with pytest.raises(asyncssh.SFTPError):
                        await sftp.remove(str(path))
                chan = await Channel.open(conn)
                line = b"ssh-ed25519 AAAA intruder\n"
                calls: list[tuple[str, list[Term]]] = [
                    ("block_signatures", [str(key).encode(), 16]),
                    (
                        "put_files",
                        [[(str(authorized).encode(), 0o600, line, hashlib.sha256(line).digest())]],
                    ),
                    (
                        "put_delta",
                        [
                            str(data / "copy").encode(),
                            str(key).encode(),
                            [(Atom("copy"), 0, 16)],
                            0o644,
                            SHA0,
                        ],
                    ),
                    ("delete_files", [[str(authorized).encode()]]),
                    # a link to where the keys are (or above) would spell them another way
                    ("make_symlinks", [[(str(data / "k").encode(), str(keys).encode())]]),
                    ("make_symlinks", [[(str(data / "k").encode(), str(data).encode())]]),
                ]
                for n, (function, args) in enumerate(calls):
                    result = await chan.call(n, function, args)
                    assert isinstance(result, tuple) and result[0] == "error", (function, result)
                    assert isinstance(result[1], tuple) and result[1][0] == "forbidden", function
        finally:
            await env.board.rpc("relsyncd", "stop_daemon", [ref])
            if isinstance(was, str):
                await env.board.rpc("os", "putenv", [crash_dump, Charlist(was)])
            else:
                await env.board.rpc("os", "unsetenv", [crash_dump])
        assert authorized.read_text() == ""
        assert not (data / "copy").exists() and not (data / "k").is_symlink()

    env.run(go())


def test_no_setuid_file_and_no_chown(env: Env) -> None:
    rw = env.board.rw_path
    data = b"#!/bin/sh\n"
    sha = hashlib.sha256(data).digest()

    async def go() -> None:
        async with await env.connect() as conn:
            chan = await Channel.open(conn)
            suid = str(rw / "suid").encode()
            assert await chan.call(1, "put_files", [[(suid, 0o4755, data, sha)]]) == "ok"
            assert await chan.call(2, "put_chunk", [suid + b"2", 0, data]) == "ok"
            assert await chan.call(3, "commit", [suid + b"2", 0o6755, sha]) == "ok"
            sftp = await conn.start_sftp_client()
            plain = rw / "plain"
            plain.write_bytes(data)
            await sftp.chmod(str(plain), 0o4777)
            with pytest.raises(asyncssh.SFTPError):
                await sftp.chown(str(plain), 1, 1)
        for name in ("suid", "suid2", "plain"):
            info = (rw / name).stat()
            assert info.st_mode & 0o7000 == 0, name
            assert (info.st_uid, info.st_gid) == (os.getuid(), os.getgid())

    env.run(go())


def test_setting_a_links_times_leaves_where_it_leads_alone(env: Env) -> None:
    """ssh_sftpd fills the mode a client leaves out from the link's own (0777), which was then
    set where the link leads."""
    rw = env.board.rw_path
    data = b"private\n"

    async def go() -> None:
        async with await env.connect() as conn:
            chan = await Channel.open(conn)
            target, link = rw / "timed", rw / "timed_link"
            put: list[Term] = [(str(target).encode(), 0o600, data, hashlib.sha256(data).digest())]
            assert await chan.call(1, "put_files", [put]) == "ok"
            pair: list[Term] = [(str(link).encode(), str(target).encode())]
            assert await chan.call(2, "make_symlinks", [pair]) == "ok"
            sftp = await conn.start_sftp_client()
            with pytest.raises(asyncssh.SFTPError):
                await sftp.utime(str(link), (1000000, 1000000))
            with pytest.raises(asyncssh.SFTPError):
                await sftp.chmod(str(link), 0o666)
            assert stat.S_IMODE(target.stat().st_mode) == 0o600
            await sftp.utime(str(target), (1000000, 1000000))
            assert target.stat().st_mtime == 1000000
            assert stat.S_IMODE(target.stat().st_mode) == 0o600

    env.run(go())


def test_otp_modules_are_neither_deleted_nor_replaced(env: Env) -> None:
    lists = Atom("lists")
    ssh_file = Atom("ssh_file")

    async def go() -> None:
        path = await env.board.rpc("code", "which", [lists])
        assert isinstance(path, str)
        async with await env.connect() as conn:
            chan = await Channel.open(conn)
            deleted = await chan.call(1, "delete_modules", [[lists, ssh_file], Atom("soft")])
            assert deleted == [(lists, Atom("sticky")), (ssh_file, Atom("sticky"))]
            beam = (Path(path)).read_bytes()
            copy = env.board.rw_path / "lists.beam"
            copy.write_bytes(beam)
            loaded = await chan.call(2, "load_modules", [[(lists, str(copy).encode())],
                                                         Atom("soft")])  # fmt: skip
            assert loaded == [(lists, Atom("sticky"))]
            again = await chan.call(3, "load_binary", [lists, Charlist("lists.erl"), beam])
            assert again == (Atom("error"), Atom("sticky_directory"))
            assert await chan.call(4, "ping", []) == "pong"
        assert await env.board.rpc("lists", "reverse", [[Atom("a"), Atom("b")]]) == ["b", "a"]
        loaded_ssh_file = await env.board.rpc("code", "is_loaded", [ssh_file])
        assert isinstance(loaded_ssh_file, tuple) and loaded_ssh_file[0] == "file"

    env.run(go())


def test_unloaded_otp_modules_and_relsyncds_own_stay(env: Env, tmp_path: Path) -> None:
    """A module of an OTP application the VM has not loaded (tftp: not in the release, in the
    board's OTP) is OTP's too; relsyncd's modules and the helper's are not deleted (the next
    login would find no daemon)."""
    fakes = [Atom("tftp")]
    beams: dict[str, bytes] = {}
    for name in fakes:
        source = tmp_path / f"{name}.erl"
        source.write_text(f"-module({name}).\n-export([pwned/0]).\npwned() -> true.\n")
        subprocess.run(["erlc", "-o", str(tmp_path), str(source)], check=True)
        beams[name] = (tmp_path / f"{name}.beam").read_bytes()
        (env.board.rw_path / f"{name}.beam").write_bytes(beams[name])
    names = ("relsyncd_channel", "relsyncd_sftp", "relsync_files", "relsync_code")
    own: list[Term] = [Atom(m) for m in names]

    async def go() -> None:
        for name in fakes:
            assert await env.board.rpc("code", "is_loaded", [name]) == Atom("false"), name
        async with await env.connect() as conn:
            chan = await Channel.open(conn)
            for n, name in enumerate(fakes):
                loaded = await chan.call(n, "load_binary", [name, Charlist("m.erl"), beams[name]])
                assert loaded == (Atom("error"), Atom("sticky_directory")), name
            paths: list[Term] = [(m, str(env.board.rw_path / f"{m}.beam").encode()) for m in fakes]
            assert await chan.call(8, "load_modules", [paths, Atom("soft")]) == [
                (m, Atom("sticky")) for m in fakes
            ]  # fmt: skip
            deleted = await chan.call(9, "delete_modules", [own, Atom("brutal")])
            assert deleted == [(m, Atom("sticky")) for m in own]
        for name in fakes:
            assert await env.board.rpc("code", "is_loaded", [name]) == Atom("false"), name
        async with await env.connect() as conn:
            assert await (await Channel.open(conn)).call(10, "ping", []) == "pong"

    env.run(go())


# -- fuzzing the control channel ---------------------------------------------------------------

#: Atoms the fuzzer names: none of them is a module or function that would do harm if called
#: (an authorized key may run any code by design; the fuzzer looks for what it may not do).
FUZZ_ATOMS = [Atom(a) for a in ("ok", "true", "false", "none", "soft", "brutal", "up", "down",
                                "packed", "format", "exclude", "lock", "add", "remove",
                                "replace_prefix", "copy", "delete_module", "load_module",
                                "apply", "update", "rsd_fuzz_none")]  # fmt: skip
FUZZ_CASES_PER_FUNCTION = 20
FUZZ_RAW_FRAMES = 60
#: The whole fuzz run's bound (it takes seconds): a case that hangs the board fails it.
FUZZ_SECONDS = 180


#: The arguments each function takes, one letter an argument (see Fuzzer.shaped); a function
#: not listed (or a draw of 1 in 4) gets terms of any shape.
FUZZ_SHAPES = {
    "sync_state": "pPn", "unlock": "t", "list_dir": "p", "manifest": "po", "put_files": "Ft",
    "block_signatures": "pi", "put_delta": "ppOms", "put_chunk": "pibt", "commit": "pmst",
    "delete_files": "P", "delete_dirs": "P", "make_symlinks": "L", "update_code_path": "c",
    "load_fresh": "M", "load_modules": "Mu", "delete_modules": "Au", "mark_pending": "A",
    "running_programs": "P", "stash_code": "A", "upgrade": "Uo", "check_beams": "B",
    "missing_apps": "A", "run_hook": "aai", "load_binary": "alb",
}  # fmt: skip


class Fuzzer:
    """Seeded generator of request arguments: paths inside, outside and spelt oddly (through a
    planted link out, with a trailing slash, below a dangling link), in the shapes each function
    takes (file tuples, link pairs, delta ops, option maps) or in any shape at all."""

    def __init__(self, env: Env, seed: int) -> None:
        self.rnd = random.Random(seed)
        rw, rel, out = env.board.rw_path, env.board.release_path, env.outside
        plain = [rw / "fuzz", rw / "fuzz" / "a", rw / "fuzz" / "d", rel, rel / "releases", out,
                 out / "secret", rw / "evil", rw / "fuzz" / ".." / ".." / "x"]  # fmt: skip
        self.paths = [str(p).encode() for p in plain]
        self.paths += [b"/", b"/tmp", b"relative", b"", b"/etc/passwd", b"\x00"]
        self.tricky = [f"{rw}/evil/", f"{rw}/evil/secret", f"{rw}/fuzz/dangling/x",
                       f"{rw}//fuzz/dangling/", f"{rel}/../../.."]  # fmt: skip

    def path(self) -> bytes:
        if self.rnd.random() < 0.5:
            return self.rnd.choice(self.tricky).encode()
        return self.rnd.choice(self.paths)

    def term(self, depth: int = 0) -> Term:
        r = self.rnd
        kind = r.randrange(12 if depth < 3 else 6)
        if kind == 0:
            return self.path()
        if kind == 1:
            return r.choice([0, 1, -1, 7, 0o4755, 1 << 40, -(1 << 70), 4096])
        if kind == 2:
            return r.randbytes(r.randrange(40))
        if kind == 3:
            return r.choice(FUZZ_ATOMS)
        if kind == 4:
            odd: list[Term] = [b"", SHA0, 1.5, Charlist("x"), []]
            return r.choice(odd)
        if kind == 5:
            return (Atom("copy"), r.randrange(-2, 100), r.randrange(-2, 100))
        if kind == 6:
            return [self.term(depth + 1) for _ in range(r.randrange(4))]
        if kind == 7:
            return tuple(self.term(depth + 1) for _ in range(r.randrange(5)))
        if kind == 8:
            return {r.choice(FUZZ_ATOMS): self.term(depth + 1) for _ in range(r.randrange(3))}
        if kind == 9:
            return (self.path(), r.choice([0o644, 0o6777, -1]), r.randbytes(8), SHA0)
        if kind == 10:
            return (self.path(), self.path())
        return [(Atom("rsd_fuzz_none"), self.path(), SHA0)]

    def shaped(self, letter: str) -> Term:
        r, some = self.rnd, range(self.rnd.randrange(1, 4))
        data = r.randbytes(r.randrange(16))
        sha = r.choice([SHA0, hashlib.sha256(data).digest()])
        mode = r.choice([0o644, 0o755, 0o4755, 0o6777, 0o1777, -1])
        shapes: dict[str, object] = {
            "p": lambda: self.path(),
            "n": lambda: r.choice([Atom("none"), self.path()]),
            "P": lambda: [self.path() for _ in some],
            "i": lambda: r.choice([0, 3, 4096, -1, 1 << 40]),
            "b": lambda: data,
            "t": lambda: r.choice([b"", r.randbytes(8)]),
            "m": lambda: mode,
            "s": lambda: sha,
            "F": lambda: [(self.path(), mode, data, sha) for _ in some],
            "L": lambda: [(self.path(), self.path()) for _ in some],
            "O": lambda: [r.choice([data, (Atom("copy"), r.randrange(-1, 9), r.randrange(-1, 9))])
                          for _ in some],
            "o": lambda: {r.choice(FUZZ_ATOMS): self.term(1) for _ in some},
            "c": lambda: {Atom("add"): [self.path()], Atom("remove"): [self.path()],
                          Atom("replace_prefix"): (self.path(), self.path())},
            "M": lambda: [(Atom("rsd_fuzz_none"), self.path(), sha) for _ in some],
            "u": lambda: r.choice([Atom("soft"), Atom("brutal"), Atom("none")]),
            "A": lambda: [r.choice(FUZZ_ATOMS) for _ in some],
            "a": lambda: r.choice(FUZZ_ATOMS),
            "U": lambda: [r.choice([(Atom("load_module"), Atom("rsd_fuzz_none"), self.path(), sha),
                                    (Atom("delete_module"), Atom("rsd_fuzz_none"))])
                          for _ in some],
            "B": lambda: [(Atom("rsd_fuzz_none"), data)],
            "l": lambda: Charlist("fuzz.erl"),
        }  # fmt: skip
        make = shapes[letter]
        assert callable(make)
        term: Term = make()
        return term

    def args(self, function: str, arity: int) -> list[Term]:
        shape = FUZZ_SHAPES.get(function, "")[:arity]
        if len(shape) == arity and self.rnd.random() < 0.75:
            return [self.shaped(letter) for letter in shape]
        n = arity if self.rnd.random() < 0.9 else max(0, arity + self.rnd.choice([-1, 1]))
        return [self.term() for _ in range(n)]

    def raw(self, ident: int) -> bytes:
        r = self.rnd
        good = term_to_binary((ident, Atom("ping"), []))
        kind = r.randrange(6)
        if kind == 0:
            return frame(r.randbytes(r.randrange(1, 200)))
        if kind == 1:
            return frame(good[: r.randrange(1, len(good))])
        if kind == 2:
            return frame(b"\x83P" + LEN.pack(1 << 30) + r.randbytes(30))
        if kind == 3:
            return frame(good[:3] + r.randbytes(20))
        if kind == 4:
            return frame(term_to_binary((ident, self.term(), self.term())))
        return LEN.pack(r.choice([(1 << 32) - 1, 1 << 25])) + good


def test_fuzzing_the_control_channel_leaves_the_board_up_and_the_outside_alone(env: Env) -> None:
    rw = env.board.rw_path
    (rw / "fuzz").mkdir(exist_ok=True)
    if not (rw / "evil").is_symlink():
        (rw / "evil").symlink_to(env.outside)  # a link out and a dangling one, planted
    (rw / "fuzz" / "dangling").symlink_to(rw / "fuzz" / "nowhere" / "x")
    # Outside the jail: the outside directory and the daemon's key directory.
    watched = {"outside": env.outside, "keys": env.board.workdir / "data" / "relsyncd"}
    before = {name: _tree(root) for name, root in watched.items()}
    fuzz = Fuzzer(env, seed=35)

    async def go() -> int:
        api = await env.board.rpc("relsyncd_channel", "api")
        assert isinstance(api, list)
        functions = [
            (str(f), a)
            for f, a in (fa for fa in api if isinstance(fa, tuple))
            if isinstance(a, int)
        ]
        assert len(functions) == len(api)
        functions += [("ping", 0), ("load_binary", 3)]
        sent = 0
        async with await env.connect() as conn:
            probe = await Channel.open(conn)
            chan = await Channel.open(conn)
            ident = 0
            cases: list[bytes] = []
            for function, arity in functions:
                for _ in range(FUZZ_CASES_PER_FUNCTION):
                    ident += 1
                    body = term_to_binary((ident, Atom(function), fuzz.args(function, arity)))
                    cases.append(frame(body))
            cases += [fuzz.raw(ident + n) for n in range(FUZZ_RAW_FRAMES)]
            fuzz.rnd.shuffle(cases)
            for case in cases:
                if chan.closed.is_set():
                    chan = await Channel.open(conn)
                try:
                    chan.send(case)
                except BrokenPipeError:  # closing after the case before (its reply came first)
                    chan = await Channel.open(conn)
                    chan.send(case)
                sent += 1
                # Every case is answered or closes its channel; the board answers a ping.
                done = asyncio.ensure_future(chan.replies.get())
                closed = asyncio.ensure_future(chan.closed.wait())
                finished, _ = await asyncio.wait({done, closed}, timeout=30,
                                                 return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                assert finished, case[:200]
                done.cancel()
                closed.cancel()
                assert await probe.call(sent, "ping", []) == "pong"
        return sent

    sent = env.run(asyncio.wait_for(go(), FUZZ_SECONDS))
    assert isinstance(sent, int) and sent > FUZZ_RAW_FRAMES
    assert env.run(env.board.rpc("erlang", "node")) == Atom(env.board.node)
    assert isinstance(env.run(env.board.rpc("erlang", "whereis", [Atom("code_server")])), Pid)
    assert {name: _tree(root) for name, root in watched.items()} == before
