"""The ``ssh`` transport: file bytes over SFTP, everything else over relsyncd's ``relsync``
subsystem channel, which runs the same ``relsync_target`` helper as erl mode.

Control frames: ``<<Len:32, term_to_binary({ReqId, Function, Args})>>`` out,
``<<Len:32, term_to_binary({ReqId, Result})>>`` back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import posixpath
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from relsync.erldist.etf import Atom, Charlist, EtfError, Term, binary_to_term, term_to_binary
from relsync.errors import ConnectError, TargetError, UsageError
from relsync.target import FilePut, Progress, Written, nothing_written
from relsync.transports.helper import (
    BATCHES_IN_FLIGHT,
    CALL_TIMEOUT,
    CHUNK,
    FILE_TIMEOUT,
    HelperTarget,
    read_chunks,
)

SUBSYSTEM = "relsync"
DEFAULT_PORT = 2228
DEFAULT_USER = "relsync"
#: Files uploaded at once over SFTP (each then committed over the control channel). OTP's SFTP
#: server (ssh 4.15, OTP 25) hands out a handle still in use once three files are open, mixing
#: their data (the hash check catches it): never keep more than two open.
UPLOADS_IN_FLIGHT = 2
#: Files over a batch's size are streamed over SFTP; the others go in batches on the control
#: channels, which write a hundred small files in one round trip (over SFTP each file took an
#: open, its writes, a close and a commit).
SFTP_MIN = CHUNK + 1
#: Control channels opened beside the first for a sync's file batches: relsyncd's worker runs a
#: channel's requests one at a time, so each lane writes while the others carry bytes. With the
#: first channel and SFTP they stay within relsyncd's default max_channels of 4.
EXTRA_LANES = 2
# A board that loses power leaves our TCP connection open with nothing coming back; ask every
# 15 s and give up after 60 s, like an Erlang node's net_ticktime in erl mode. (asyncssh gives up
# when the keepalive after KEEPALIVE_COUNT_MAX unanswered ones falls due: 3 makes 4 intervals.)
KEEPALIVE_INTERVAL = 15.0
KEEPALIVE_COUNT_MAX = 3
#: The largest reply frame accepted: far above the biggest real one (a manifest of a 10,000-file
#: release is about 0.9 MB), so a broken stream is an error instead of unbounded memory.
MAX_REPLY = 64 << 20
_LEN = struct.Struct(">I")


def default_known_hosts() -> Path:
    """OpenSSH's per-user known_hosts file."""
    return Path.home() / ".ssh" / "known_hosts"


class _HostKeyPolicy(asyncssh.SSHClient):
    """Checks the board's host key against known_hosts; trusts a first-seen key on request."""

    def __init__(self, known: Path, host: str, port: int, accept_new: bool) -> None:
        self._host, self._port, self._accept_new = host, port, accept_new
        self._has_entry = False
        self.new_key: asyncssh.SSHKey | None = None
        self.refusal = ""
        if known.is_file():
            keys = asyncssh.read_known_hosts(str(known)).match(host, "", port)
            self._has_entry = bool(keys[0] or keys[1])

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        """Called only for a key known_hosts does not trust."""
        where = f"[{self._host}]:{self._port}"
        if self._has_entry:
            self.refusal = (
                f"the host key of {where} CHANGED; if the board was re-flashed, remove its line "
                "from known_hosts and connect again with --accept-new-host-key"
            )
            return False
        if not self._accept_new:
            self.refusal = (
                f"unknown host key for {where}; trust it once with --accept-new-host-key "
                "or add it to known_hosts"
            )
            return False
        self.new_key = key
        return True


class _ControlSession(asyncssh.SSHClientSession[bytes]):
    """The relsync subsystem: framed requests out, replies matched by request id."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._buf = bytearray()
        self.pending: dict[int, asyncio.Future[Term]] = {}
        self.lost: Exception | None = None

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        """Collect bytes and resolve every complete reply frame."""
        if self.lost is not None:
            return
        self._buf += data
        while len(self._buf) >= 4:
            (size,) = _LEN.unpack_from(self._buf)
            if size > MAX_REPLY:
                self._buf.clear()
                self.connection_lost(
                    TargetError(
                        f"{self._label} sent a reply of {size} bytes, over relsync's limit of "
                        f"{MAX_REPLY >> 20} MiB (a broken stream or a relsyncd that does not "
                        "match this relsync); check relsyncd on the board and run relsync again"
                    )
                )
                return
            if len(self._buf) < 4 + size:
                return
            frame = bytes(self._buf[4 : 4 + size])
            del self._buf[: 4 + size]
            try:
                reply = binary_to_term(frame)
            except EtfError as exc:
                self.connection_lost(exc)
                return
            if isinstance(reply, tuple) and len(reply) == 2 and isinstance(reply[0], int):
                future = self.pending.pop(reply[0], None)
                if future is not None and not future.done():
                    future.set_result(reply[1])

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every pending call at once."""
        self.lost = exc or ConnectionError("the relsync channel was closed")
        for future in self.pending.values():
            if not future.done():
                future.set_exception(self.lost)
        self.pending.clear()


@dataclass(frozen=True, slots=True)
class _Lane:
    """One relsync subsystem channel and the session reading its replies."""

    chan: asyncssh.SSHClientChannel[bytes]
    session: _ControlSession


async def _open_lane(conn: asyncssh.SSHClientConnection, label: str) -> _Lane:
    session = _ControlSession(label)
    chan, _ = await conn.create_session(lambda: session, subsystem=SUBSYSTEM, encoding=None)
    return _Lane(chan, session)


class SshTarget(HelperTarget):
    """A target reached over SSH through relsyncd."""

    def __init__(self, conn: asyncssh.SSHClientConnection, lane: _Lane, label: str) -> None:
        self._conn, self._control = conn, lane
        #: The lanes file batches go on, idle ones waiting here (the control channel among them).
        self._idle: asyncio.Queue[_Lane] = asyncio.Queue()
        self._idle.put_nowait(lane)
        self._extra: list[_Lane] = []
        self._sftp_started: asyncio.Future[asyncssh.SFTPClient] | None = None
        self._ids = itertools.count(1)
        self.label = label

    @classmethod
    async def open(
        cls,
        host: str,
        *,
        port: int = DEFAULT_PORT,
        user: str = DEFAULT_USER,
        identity: str | None = None,
        known_hosts: Path | None = None,
        accept_new_host_key: bool = False,
        timeout: float = 10.0,
    ) -> SshTarget:
        """Connect, check the host key, authenticate with a key, open SFTP and the channel."""
        known = known_hosts or default_known_hosts()
        policy = _HostKeyPolicy(known, host, port, accept_new_host_key)
        label = f"{user}@{host}:{port}"
        try:
            conn = await asyncio.wait_for(
                asyncssh.connect(
                    host, port, username=user,
                    known_hosts=str(known) if known.is_file() else asyncssh.import_known_hosts(""),
                    client_factory=lambda: policy, password=None, kbdint_auth=False,
                    client_keys=[identity] if identity else (), agent_path=None if identity else (),
                    preferred_auth="publickey",
                    keepalive_interval=KEEPALIVE_INTERVAL, keepalive_count_max=KEEPALIVE_COUNT_MAX,
                ),
                timeout,
            )  # fmt: skip
        except asyncssh.HostKeyNotVerifiable as exc:
            raise ConnectError(f"ssh: {policy.refusal or exc.reason}") from exc
        except asyncssh.PermissionDenied as exc:
            raise ConnectError(
                f"ssh: {label} refused our key; add your public key to relsyncd's "
                "authorized_keys on the board, or choose the key with --identity"
            ) from exc
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            raise ConnectError(
                f"ssh: cannot reach {label} ({reason}); is relsyncd running on the board "
                "(enabled, ssh_port) and the port right (-P)?"
            ) from exc
        if policy.new_key is not None:
            try:
                _record_host_key(known, host, port, policy.new_key)
            except OSError as exc:
                conn.close()
                raise UsageError(
                    f"ssh: cannot record the host key of {label} in {known} "
                    f"({exc.strerror}); give a writable --known-hosts FILE"
                ) from None
        try:
            lane = await _open_lane(conn, label)
        except asyncssh.Error as exc:
            conn.close()
            raise ConnectError(
                f"ssh: {label} has no relsync subsystem ({exc.reason}); add the relsyncd "
                "application to the board's release"
            ) from exc
        return cls(conn, lane, label)

    async def _call(self, function: str, args: list[Term], timeout: float = CALL_TIMEOUT) -> Term:
        return await self._call_on(self._control, function, args, timeout)

    async def _open_lanes(self, nbytes: int) -> int:
        """Opens up to EXTRA_LANES more channels when the batches fill more than one each; a
        relsyncd that allows fewer channels gets fewer lanes."""
        wanted = min(EXTRA_LANES, nbytes // CHUNK) - len(self._extra)
        if wanted > 0:
            opened = await asyncio.gather(
                *(_open_lane(self._conn, self.label) for _ in range(wanted)),
                return_exceptions=True,
            )
            for lane in opened:
                if isinstance(lane, _Lane):
                    self._extra.append(lane)
                    self._idle.put_nowait(lane)
        return max(BATCHES_IN_FLIGHT, 1 + len(self._extra))

    async def _on_lane(self, function: str, args: list[Term]) -> Term:
        lane = await self._idle.get()
        try:
            return await self._call_on(lane, function, args, FILE_TIMEOUT)
        finally:
            self._idle.put_nowait(lane)

    async def _call_on(self, lane: _Lane, function: str, args: list[Term], timeout: float) -> Term:
        session = lane.session
        if session.lost is not None:
            raise self._lost(session.lost)
        ident = next(self._ids)
        future: asyncio.Future[Term] = asyncio.get_running_loop().create_future()
        session.pending[ident] = future
        frame = term_to_binary((ident, Atom(function), args))
        try:
            lane.chan.write(_LEN.pack(len(frame)) + frame)
            result = await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            session.pending.pop(ident, None)
            raise TargetError(
                f"{self.label} did not answer {function} within {timeout:g} s; "
                "check the board, then run relsync again"
            ) from exc
        except (OSError, EtfError, asyncssh.Error) as exc:
            raise self._lost(exc) from exc
        match result:
            case ("error", ("frame_too_large", int(size), int(limit))):
                raise TargetError(
                    f"{self.label} refused a {function} request of {size} bytes (relsyncd's "
                    f"max_frame is {limit}); raise max_frame in relsyncd's settings on the board"
                )
        return result

    def _lost(self, exc: BaseException) -> TargetError:
        """The one-line error for a connection to the board that broke mid-sync."""
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        return TargetError(
            f"lost the connection to {self.label} ({reason}); check the board and run "
            "relsync again: the next sync converges"
        )

    async def _ensure_upgrader(self) -> None:
        """relsyncd ships ``relsync_upgrade`` beside the helper: nothing to push."""

    async def _load_binary(self, module: str, beam: bytes) -> Term:
        return await self._call("load_binary", [Atom(module), Charlist(f"{module}.beam"), beam])

    async def _sftp(self) -> asyncssh.SFTPClient:
        """The SFTP session, opened on first use (a sync of small files needs none)."""
        if self._sftp_started is None:
            self._sftp_started = asyncio.ensure_future(self._conn.start_sftp_client())
        try:
            return await asyncio.shield(self._sftp_started)
        except asyncssh.ChannelOpenError as exc:
            raise TargetError(
                f"{self.label} refused an SFTP session ({exc.reason}); check that the board "
                "runs relsyncd, which serves SFTP beside the relsync subsystem"
            ) from exc
        except (OSError, asyncssh.Error) as exc:
            raise self._lost(exc) from exc

    async def put_files(
        self, files: Sequence[FilePut], progress: Progress, written: Written = nothing_written
    ) -> list[str]:
        """Files under ``SFTP_MIN`` bytes go in batches over the control channels (one round
        trip for many). Bigger ones are uploaded over SFTP to their ``temp_path`` beside each
        file, then committed (hash checked, renamed into place) over the control
        channel; a file with a delta base goes as a block delta there when that pays. A path
        that is not UTF-8 goes over the control channel, which takes names as bytes (OTP's
        SFTP server decodes them as UTF-8)."""
        streamed = [p for p in files if _by_sftp(p)]
        if streamed:  # SFTP's channel first: the batches' extra lanes take what relsyncd has left
            await self._sftp()
        small = [p for p in files if not _by_sftp(p)]
        deltas = await super().put_files(small, progress, written)
        made: dict[str, asyncio.Task[None]] = {}
        slots = asyncio.Semaphore(UPLOADS_IN_FLIGHT)

        async def upload(put: FilePut) -> None:
            await place(put)
            written([put.path])

        async def place(put: FilePut) -> None:
            directory = posixpath.dirname(put.path)
            tmp = self.temp_path(put.path)
            async with slots:  # (also bounds the whole files read for a delta)
                if await self._put_delta(put, progress):
                    deltas.append(put.path)
                    return
                sftp = await self._sftp()
                try:
                    if directory not in made:  # every upload into it waits for the one mkdir
                        made[directory] = asyncio.create_task(
                            sftp.makedirs(directory, exist_ok=True)
                        )
                    await made[directory]
                    async with sftp.open(tmp, "wb") as remote:
                        for chunk in read_chunks(put.local):
                            await remote.write(chunk)
                            progress(len(chunk))
                except asyncssh.SFTPFailure:
                    # SFTP v3 says only "failure" (a full disk, among others): send this file
                    # over the control channel instead, which tells the exact cause.
                    await self._put_large(put, progress)
                    return
                except asyncssh.SFTPError as exc:
                    raise TargetError(_sftp_message(self.label, put.path, exc)) from exc
                except (OSError, asyncssh.Error) as exc:  # the board went away mid-upload
                    raise self._lost(exc) from exc
                await self.commit(put)

        try:
            async with asyncio.TaskGroup() as group:
                for put in streamed:
                    group.create_task(upload(put))
        except BaseExceptionGroup as group_error:
            raise _first(group_error) from None
        return deltas

    async def close(self) -> None:
        """See :class:`relsync.target.Target`."""
        started = self._sftp_started
        if (
            started is not None
            and started.done()
            and not started.cancelled()
            and not started.exception()
        ):
            started.result().exit()
        for lane in (self._control, *self._extra):
            lane.chan.close()
        self._conn.close()
        with contextlib.suppress(OSError, asyncssh.Error):  # already gone with the board
            await self._conn.wait_closed()


def _by_sftp(put: FilePut) -> bool:
    """Whether ``put`` goes over SFTP: a big file whose path is UTF-8 (a name read as bytes
    that are not UTF-8 holds surrogate escapes)."""
    return put.size >= SFTP_MIN and not any("\udc80" <= c <= "\udcff" for c in put.path)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error of a task group, unwrapped (the others are its consequences)."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


def _sftp_message(label: str, path: str, exc: asyncssh.SFTPError) -> str:
    if isinstance(exc, asyncssh.SFTPPermissionDenied | asyncssh.SFTPWriteProtect):
        hint = "relsyncd refused the path or it is read-only; give a writable --destination-rw-path"
    elif isinstance(exc, asyncssh.SFTPNoSpaceOnFilesystem):
        hint = "the target's disk is full; free space on it and sync again"
    else:
        hint = "check the path on the target"
    reason = exc.reason or type(exc).__name__.removeprefix("SFTP")
    return f"writing {path} failed on {label}: {reason}; {hint}"


def _record_host_key(known: Path, host: str, port: int, key: asyncssh.SSHKey) -> None:
    known.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = host if port == 22 else f"[{host}]:{port}"
    line = f"{name} {key.export_public_key('openssh').decode().strip()}\n"
    with open(known, "a") as handle:
        handle.write(line)
    os.chmod(known, 0o600)
