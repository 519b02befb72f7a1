"""Whatever a client sends, relsyncd stays within bounds and a bad channel only harms itself;
stock OpenSSH clients work with it; relsync's side of ssh mode is bounded too.

One board with relsyncd (the example release, ``LocalBoard.enable_ssh``) serves the module.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from support.control_channel import LEN, Channel
from support.control_channel import frame as frame_bytes

from relsync.erldist.etf import Atom, Charlist, Term, binary_to_term, term_to_binary
from relsync.errors import TargetError
from relsync.harness.example import build_example_release
from relsync.harness.local import LocalBoard
from relsync.harness.relsyncd import SshAccess
from relsync.target import FilePut
from relsync.transports import helper
from relsync.transports import ssh as ssh_transport
from relsync.transports.ssh import MAX_REPLY, SshTarget, _ControlSession

pytestmark = pytest.mark.integration

#: A hook that blocks the channel's worker until the test process sends it ``go``.
SLOW_HOOK = "-module(rsd_limits_hook).\n-export([wait/0]).\n" \
    "wait() -> register(rsd_limits_hook, self()), receive go -> finished end.\n"  # fmt: skip


class Board:
    """The module's board, with its event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, board: LocalBoard) -> None:
        self.loop, self.board = loop, board

    @property
    def ssh(self) -> SshAccess:
        assert self.board.ssh is not None
        return self.board.ssh

    def run(self, coro: object) -> object:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    async def connect(self) -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            "127.0.0.1", self.ssh.port, username=self.ssh.user,
            client_keys=[str(self.ssh.identity)], known_hosts=None, agent_path=None,
        )  # fmt: skip


def frame(term: Term) -> bytes:
    return frame_bytes(term_to_binary(term))


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Board]:
    loop = asyncio.new_event_loop()
    work = tmp_path_factory.mktemp("limits")
    local = loop.run_until_complete(
        LocalBoard.start(build_example_release(), workdir=work / "board")
    )
    try:
        loop.run_until_complete(local.enable_ssh())
        local.rw_path.mkdir(parents=True, exist_ok=True)
        yield Board(loop, local)
    finally:
        loop.run_until_complete(local.stop())
        loop.close()


# -- relsyncd: bad channels ---------------------------------------------------------------------


def test_a_malformed_frame_closes_only_its_channel(board: Board) -> None:
    async def go() -> None:
        async with await board.connect() as conn:
            sftp = await conn.start_sftp_client()
            bad, good = await Channel.open(conn), await Channel.open(conn)
            assert await good.call(1, "ping", []) == "pong"
            bad.send(LEN.pack(5) + b"junk!")
            await asyncio.wait_for(bad.closed.wait(), 30)
            assert await good.call(2, "ping", []) == "pong"
            assert await sftp.listdir(str(board.board.rw_path)) is not None
            again = await Channel.open(conn)
            assert await again.call(1, "ping", []) == "pong"

    board.run(go())


def test_a_frame_over_max_frame_is_refused_with_an_error_and_closes_its_channel(
    board: Board,
) -> None:
    async def go() -> None:
        async with await board.connect() as conn:
            chan, other = await Channel.open(conn), await Channel.open(conn)
            body = term_to_binary((7, Atom("ping"), [b"x" * 1000]))
            chan.send(frame((6, Atom("ping"), [])) + LEN.pack(1 << 30) + body)
            assert await asyncio.wait_for(chan.replies.get(), 30) == (6, "pong")
            error = await asyncio.wait_for(chan.replies.get(), 30)
            assert error == (7, (Atom("error"), (Atom("frame_too_large"), 1 << 30, 16 << 20)))
            await asyncio.wait_for(chan.closed.wait(), 30)
            assert await other.call(1, "ping", []) == "pong"

    board.run(go())


def test_a_client_cannot_send_ahead_of_a_busy_worker(board: Board, tmp_path: Path) -> None:
    """While a hook holds the channel's worker, relsyncd takes no more than about one SSH
    window of further requests: the rest stays with the client, and all of it is answered
    once the worker is free."""
    source = tmp_path / "rsd_limits_hook.erl"
    source.write_text(SLOW_HOOK)
    subprocess.run(["erlc", "-o", str(tmp_path), str(source)], check=True)
    beam = (tmp_path / "rsd_limits_hook.beam").read_bytes()
    count, size = 48, 1 << 20  # 48 MiB of requests, far above any SSH window

    async def go() -> None:
        async with await board.connect() as conn:
            chan = await Channel.open(conn)
            hook = Atom("rsd_limits_hook")
            loaded = await chan.call(1, "load_binary", [hook, Charlist("h.erl"), beam])
            assert loaded == (Atom("module"), hook)
            chan.send(frame((2, Atom("run_hook"), [hook, Atom("wait"), 60000])))
            while await board.board.rpc("erlang", "whereis", [hook]) == "undefined":
                await asyncio.sleep(0.02)
            for ident in range(3, 3 + count):
                chan.send(frame((ident, Atom("ping"), [os.urandom(size)])))
            assert chan.chan is not None
            probe = await Channel.open(conn)
            # Until the board has taken all of it, or stopped taking any: the window is
            # closed, and still closed after a round trip on the same connection. (asyncssh
            # has no public accessor for a channel's send window.)
            while chan.chan.get_write_buffer_size():
                if chan.chan._send_window == 0:
                    assert await probe.call(1, "ping", []) == "pong"
                    if chan.chan._send_window == 0:
                        break
                await asyncio.sleep(0.02)
            assert chan.chan.get_write_buffer_size() > (count - 8) * size
            await board.board.rpc("erlang", "send", [hook, Atom("go")])
            assert await asyncio.wait_for(chan.replies.get(), 30) == (
                2, (Atom("ok"), Atom("finished"), b"")
            )  # fmt: skip
            for ident in range(3, 3 + count):
                reply = await asyncio.wait_for(chan.replies.get(), 60)
                assert reply == (ident, (Atom("error"), Atom("unknown_function")))

    board.run(go())


# -- stock OpenSSH ------------------------------------------------------------------------------


def _openssh(board: Board, tool: str) -> list[str]:
    """``tool`` (ssh or sftp) as a user of Debian's defaults runs it: sending LANG and LC_*."""
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} (openssh-client) is not installed")
    port = ["-P" if tool == "sftp" else "-p", str(board.ssh.port)]
    return [tool, "-F", "/dev/null", *port, "-i", str(board.ssh.identity),
            "-o", "SendEnv=LANG", "-o", "SendEnv=LC_*", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]  # fmt: skip


def _locale_env() -> dict[str, str]:
    return {**os.environ, "LANG": "C.UTF-8", "LC_CTYPE": "C.UTF-8", "LC_MESSAGES": "C"}


def test_openssh_sftp_with_sendenv_lists_a_directory(board: Board) -> None:
    rw = board.board.rw_path
    (rw / "listed-by-openssh").write_text("x")
    argv = [*_openssh(board, "sftp"), "-b", "-", f"{board.ssh.user}@127.0.0.1"]
    run = subprocess.run(argv, input=f"ls {rw}\n", capture_output=True, text=True,
                         env=_locale_env(), timeout=60, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "listed-by-openssh" in run.stdout


def test_openssh_ssh_with_sendenv_gets_the_relsync_subsystem(board: Board) -> None:
    argv = [*_openssh(board, "ssh"), "-s", f"{board.ssh.user}@127.0.0.1", "relsync"]
    request = frame((1, Atom("ping"), []))
    run = subprocess.run(argv, input=request, capture_output=True, env=_locale_env(),
                         timeout=60, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout[4:] and binary_to_term(run.stdout[4:]) == (1, "pong")


# -- relsync's side -----------------------------------------------------------------------------


def test_a_reply_over_the_cap_fails_the_call_instead_of_growing_the_buffer() -> None:
    async def go() -> None:
        session = _ControlSession("relsync@board:2228")
        future: asyncio.Future[Term] = asyncio.get_running_loop().create_future()
        session.pending[1] = future
        session.data_received(LEN.pack(MAX_REPLY + 1) + b"\x83" * 1000, None)
        session.data_received(b"\x00" * 100_000, None)
        assert future.done()
        with pytest.raises(TargetError) as info:
            future.result()
        message = str(info.value)
        assert "relsync@board:2228" in message and str(MAX_REPLY + 1) in message
        assert "\n" not in message
        assert len(session._buf) == 0

    asyncio.run(go())


class _Freezer:
    """A TCP relay on 127.0.0.1 that can stop passing bytes, like a board losing power."""

    def __init__(self, port: int) -> None:
        self.port, self.frozen = port, False
        self.writers: list[asyncio.StreamWriter] = []

    def close(self) -> None:
        self.server.close()
        for writer in self.writers:
            writer.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if not self.frozen:
                    dst.write(data)

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer),
                             return_exceptions=True)  # fmt: skip
        writer.close()
        up_writer.close()


def test_a_board_that_stops_answering_is_given_up_after_60_s(
    board: Board, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncssh gives up when the keepalive after ``KEEPALIVE_COUNT_MAX`` unanswered ones falls
    due: counted here with keepalives shortened, the real give-up is that many plus one
    intervals, as the README says."""
    interval = ssh_transport.KEEPALIVE_INTERVAL
    monkeypatch.setattr(ssh_transport, "KEEPALIVE_INTERVAL", 0.05)

    async def go() -> None:
        relay = _Freezer(board.ssh.port)
        port = await relay.start()
        target = await SshTarget.open(
            "127.0.0.1", port=port, user=board.ssh.user, identity=str(board.ssh.identity),
            known_hosts=board.board.workdir / "kh", accept_new_host_key=True,
        )  # fmt: skip
        try:
            assert await target._call("ping", []) == "pong"
            caplog.clear()
            relay.frozen = True
            with pytest.raises(TargetError, match="lost the connection"):
                await target._call("ping", [], 600)
        finally:
            relay.close()
            await target.close()

    with caplog.at_level(logging.DEBUG, logger="asyncssh"):
        board.run(go())
    sent = sum("Sending keepalive request" in r.getMessage() for r in caplog.records)
    assert sent == ssh_transport.KEEPALIVE_COUNT_MAX
    assert interval * (sent + 1) == 60


def _puts(tmp: Path, dest: Path, sizes: list[int]) -> list[FilePut]:
    """Local files of ``sizes`` bytes (random) and their puts into ``dest`` on the board."""
    puts = []
    rnd = random.Random(len(sizes))
    for n, size in enumerate(sizes):
        local = tmp / f"f{n}.bin"
        local.write_bytes(rnd.randbytes(size))
        digest = hashlib.sha256(local.read_bytes()).digest()
        puts.append(FilePut(str(dest / local.name), str(local), size, 0o644, digest))
    return puts


def _written(puts: list[FilePut]) -> bool:
    return all(Path(p.path).read_bytes() == Path(p.local).read_bytes() for p in puts)


@pytest.mark.parametrize("taken", [0, 2], ids=["free", "channels-taken"])
def test_file_batches_go_side_by_side_on_extra_channels_that_leave_sftp_its_place(
    board: Board, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken: int
) -> None:
    """Batches of small files go over up to EXTRA_LANES more control channels at once; a file
    over a batch goes over SFTP, whose channel is opened first: with ``taken`` of relsyncd's 4
    channels held by others, the sync still writes everything, on the channels left."""
    dest = board.board.rw_path / f"lanes-{taken}"
    dest.mkdir()
    puts = _puts(tmp_path, dest, [300_000] * 60 + [helper.CHUNK + 1000])
    busy, peak = 0, 0
    call_on = SshTarget._call_on

    async def counted(self: SshTarget, *args: Any) -> Term:
        nonlocal busy, peak
        busy += 1
        peak = max(peak, busy)
        try:
            return await call_on(self, *args)
        finally:
            busy -= 1

    monkeypatch.setattr(SshTarget, "_call_on", counted)

    async def go() -> tuple[int, int]:
        target = await SshTarget.open(
            "127.0.0.1", port=board.ssh.port, user=board.ssh.user,
            identity=str(board.ssh.identity), known_hosts=board.board.workdir / "kh",
            accept_new_host_key=True,
        )  # fmt: skip
        try:
            held = [await Channel.open(target._conn) for _ in range(taken)]
            assert await target.put_files(puts, lambda _n: None) == []
            assert all([await c.call(1, "ping", []) == "pong" for c in held])
            return len(target._extra), peak
        finally:
            await target.close()

    extra, most = board.run(go())  # type: ignore[misc]
    assert _written(puts)
    assert extra == (ssh_transport.EXTRA_LANES if taken == 0 else 0)
    assert most >= (1 + ssh_transport.EXTRA_LANES if taken == 0 else 1)
