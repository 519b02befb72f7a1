"""An established distribution link: framing, ticks, message dispatch, RPC over ``rex``.

Packets after the handshake are ``<<Len:32, 112, 131, Control, 131, Message>>`` (pass-through,
no atom cache, no fragments); ``Len = 0`` is a tick. Sending writes the ETF scatter list with
``loop.sock_sendall`` on the raw non-blocking socket, so large binaries are never copied. One
writer task owns the socket while it has a backlog, which keeps every packet whole even when a
caller is cancelled mid-send. On an idle link, the small packets of one event-loop iteration
(e.g. a sync's concurrent first requests) are joined and sent with one system call at its end:
each send on loopback costs tens of microseconds, on both ends of the link.
Receiving: a reader callback registered once fills a growing buffer with ``recv_into`` and
decodes whole packets at offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import struct
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self, TypeAlias

from relsync.erldist import etf, rpc
from relsync.erldist.errors import ConnectionLost, RpcTimeout
from relsync.erldist.etf import Atom, Buffer, Pid, Reference, Term

PASS_THROUGH: Final = 112
# Control message operations that carry a message for a local process.
_SEND_OPS: Final = frozenset(
    {
        2,  # SEND {2, Unused, ToPid}
        6,  # REG_SEND {6, From, Unused, ToName}
        12,  # SEND_TT
        16,  # REG_SEND_TT
        22,  # SEND_SENDER {22, From, ToPid}
        23,  # SEND_SENDER_TT
        33,  # ALIAS_SEND {33, From, Alias}
        34,  # ALIAS_SEND_TT
    }
)
REG_SEND: Final = 6

#: Builds a request message from our pid and the request's reference.
Builder: TypeAlias = Callable[[Pid, Reference], Term]

DEFAULT_TICK: Final = 15.0  # net_ticktime 60 s / 4
_TICK: Final = b"\0\0\0\0"
_HEADER: Final = struct.Struct(">IB")
_LEN: Final = struct.Struct(">I")
_RECV_INITIAL: Final = 256 * 1024
_RECV_MIN_FREE: Final = 64 * 1024
_SMALL: Final = 64 * 1024  # packets up to this size are joined into one send
#: The largest packet accepted from the peer: far above the biggest real reply (a sync_state of
#: a 10,000-file release is about 2.5 MB, the block sums of a 4 GB file 7 MB, hook output at
#: most 1 MiB), so a broken length header is an error instead of unbounded memory.
MAX_PACKET: Final = 64 << 20


class Connection:
    """A link to one Erlang node. Create it with :func:`relsync.erldist.node.connect`."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        local_name: str,
        peer_name: str,
        creation: int,
        peer_flags: int = 0,
        tick_interval: float = DEFAULT_TICK,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self.local_name: Final = local_name
        self.peer_name: Final = peer_name
        self.peer_flags: Final = peer_flags
        self.creation: Final = creation
        self.pid: Final = Pid(Atom(local_name), 1, 0, creation)
        self._ref_seq = itertools.count(int.from_bytes(os.urandom(5), "big"))  # 40 bits
        self._ref_salt = int.from_bytes(os.urandom(4), "big")
        self._pending: dict[tuple[int, ...], asyncio.Future[Term]] = {}
        self._lost: str | None = None
        self._tick = tick_interval
        now = self._loop.time()
        self._last_send = now
        self._last_recv = now
        self._wq: deque[list[Buffer]] = deque()
        self._cork: list[Buffer] = []  # small packets waiting for the end of this iteration
        self._wbusy = False
        self._wwake = asyncio.Event()
        self._reg_ctl: dict[str, bytes] = {}
        self._rex = rpc.RexEncoder(self.pid)
        self._rbuf = bytearray(_RECV_INITIAL)
        self._rview = memoryview(self._rbuf)
        self._rstart = self._rend = 0
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self._tasks = [
            self._loop.create_task(self._write_loop(), name=f"dist-write {peer_name}"),
            self._loop.create_task(self._tick_loop(), name=f"dist-tick {peer_name}"),
        ]

    # -- public API -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the link is gone (closed by us or lost)."""
        return self._lost is not None

    async def call(
        self, module: str, function: str, args: list[Term], timeout: float | None = 30.0
    ) -> Term:
        """``rpc:call(Peer, module, function, args)``; raise BadRpc, RpcTimeout, ConnectionLost.

        Large binaries in ``args`` are sent without copying; do not modify them until the call
        returns.
        """
        self._check_open()
        ids = self._new_ref_ids()
        message = self._rex.encode(ids, module, function, args)
        reply = await self._roundtrip(ids, rpc.REX, message, timeout, module, function, args)
        return rpc.rex_result(reply, self.peer_name, rpc.mfa(module, function, len(args)))

    async def request(self, to_name: str, build: Builder, timeout: float | None) -> Term:
        """Send ``build(pid, ref)`` to registered process ``to_name``; await ``{ref, Reply}``."""
        self._check_open()
        ids = self._new_ref_ids()
        message = etf.encode(build(self.pid, Reference(self.pid.node, self.creation, ids)))
        return await self._roundtrip(ids, to_name, message, timeout, to_name, "request", [])

    async def _roundtrip(
        self,
        ids: tuple[int, ...],
        to_name: str,
        message: list[Buffer],
        timeout: float | None,
        *what: object,
    ) -> Term:
        fut: asyncio.Future[Term] = self._loop.create_future()
        self._pending[ids] = fut
        timer = None
        try:
            self._send_packet(self._reg_control(to_name), message)
            if timeout is not None:
                timer = self._loop.call_later(timeout, self._expire, fut, timeout, what)
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            self._pending.pop(ids, None)

    def _expire(self, fut: asyncio.Future[Term], timeout: float, what: tuple[object, ...]) -> None:
        if not fut.done():
            module, function, args = what
            call = rpc.mfa(str(module), str(function), len(args))  # type: ignore[arg-type]
            fut.set_exception(RpcTimeout(self.peer_name, call, timeout))

    def _reg_control(self, to_name: str) -> bytes:
        ctl = self._reg_ctl.get(to_name)
        if ctl is None:
            ctl = etf.term_to_binary((REG_SEND, self.pid, Atom(""), Atom(to_name)))
            self._reg_ctl[to_name] = ctl
        return ctl

    def send_reg(self, to_name: str, message: Term) -> None:
        """Queue ``message`` for registered process ``to_name`` (REG_SEND); never blocks."""
        self._check_open()
        self._send_packet(self._reg_control(to_name), etf.encode(message))

    async def close(self) -> None:
        """Close the link; pending requests fail with ConnectionLost. Idempotent."""
        if self._lost is None:
            # Let queued packets go out first (bounded: the peer may be gone).
            self._flush()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    while self._wbusy and self._lost is None:
                        await asyncio.sleep(0.001)
        self._abort("closed by us")
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._sock.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = f"lost: {self._lost}" if self._lost else "open"
        return f"<Connection {self.local_name} -> {self.peer_name} ({state})>"

    # -- internals --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._lost is not None:
            raise ConnectionLost(self.peer_name, self._lost)

    def _new_ref_ids(self) -> tuple[int, int, int]:
        n = next(self._ref_seq)
        return (n & 0x3FFFF, (n >> 18) & 0xFFFFFFFF, self._ref_salt)

    def _abort(self, reason: str) -> None:
        """Mark the link dead, fail every pending request at once, wake the tasks."""
        if self._lost is not None:
            return
        self._lost = reason
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(self.peer_name, reason))
        self._wq.clear()
        self._cork.clear()
        self._wwake.set()
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._sock.fileno())
        with contextlib.suppress(OSError):
            # Wakes a reader blocked in recv and a writer blocked in send.
            self._sock.shutdown(socket.SHUT_RDWR)

    # -- sending

    def _send_packet(self, ctl: bytes, msg: list[Buffer]) -> None:
        size = 1 + len(ctl) + sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in msg)
        head = _HEADER.pack(size, PASS_THROUGH) + ctl
        if size <= _SMALL:
            self._submit([head + b"".join(msg)])
        elif isinstance(msg[0], bytes):
            self._submit([head + msg[0], *msg[1:]])
        else:
            self._submit([head, *msg])

    def _submit(self, parts: list[Buffer]) -> None:
        if not self._wbusy and len(parts) == 1:
            if not self._cork:
                self._loop.call_soon(self._flush)
            self._cork.append(parts[0])
            return
        self._flush()  # what was corked goes first
        self._check_open()
        self._queue(parts)

    def _flush(self) -> None:
        """Send the corked packets with one system call; what the socket does not take now
        goes to the writer task. A failure fails every pending request (see :meth:`_abort`)."""
        if not self._cork or self._lost is not None:
            return
        parts, self._cork = self._cork, []
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._abort(f"send failed: {exc.strerror or exc}")
            return
        self._last_send = self._loop.time()
        if sent < len(data):
            self._queue([memoryview(data)[sent:]])

    def _queue(self, parts: list[Buffer]) -> None:
        self._wq.append(parts)
        self._wbusy = True
        self._wwake.set()

    async def _write_loop(self) -> None:
        sendall = self._loop.sock_sendall
        try:
            while self._lost is None:
                if not self._wq:
                    self._wbusy = False
                    self._wwake.clear()
                    await self._wwake.wait()
                    continue
                self._wbusy = True
                for part in self._wq.popleft():
                    await sendall(self._sock, part)
                    self._last_send = self._loop.time()
        except OSError as exc:
            self._abort(f"send failed: {exc.strerror or exc}")

    async def _tick_loop(self) -> None:
        """Send a tick after ``tick`` s of our silence; drop the link after 4 silent periods."""
        while self._lost is None:
            now = self._loop.time()
            if now - self._last_recv >= 4 * self._tick:
                self._abort(f"no data or tick from the peer for {4 * self._tick:g} s")
                return
            if now - self._last_send >= self._tick and not self._wbusy:
                with contextlib.suppress(ConnectionLost):
                    self._submit([_TICK])
            wake = min(self._last_send + self._tick, self._last_recv + 4 * self._tick)
            await asyncio.sleep(max(wake - self._loop.time(), self._tick / 16))

    # -- receiving

    def _on_readable(self) -> None:
        """Reader callback (registered once): drain the socket, dispatch whole packets.

        A persistent ``add_reader`` callback with ``recv_into`` saves the per-receive epoll
        registration and task switch that ``loop.sock_recv_into`` costs (~60 us per RPC here).
        """
        try:
            n = self._sock.recv_into(self._rview[self._rend :])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._abort(f"receive failed: {exc.strerror or exc}")
            return
        if n == 0:
            self._abort("the peer closed the connection")
            return
        self._rend += n
        self._last_recv = self._loop.time()
        try:
            self._parse()
        except (etf.EtfError, ValueError) as exc:
            self._abort(f"undecodable packet from the peer: {exc}")

    def _parse(self) -> None:
        buf, view, start, end = self._rbuf, self._rview, self._rstart, self._rend
        need = 4
        while end - start >= 4:
            (size,) = _LEN.unpack_from(buf, start)
            if size > MAX_PACKET:
                self._abort(
                    f"the peer announced a packet of {size} bytes, over relsync's limit of "
                    f"{MAX_PACKET >> 20} MiB (a broken stream, or not an Erlang node)"
                )
                return
            need = 4 + size
            if end - start < need:
                break
            if size:
                self._on_packet(view[start + 4 : start + need])
            elif not self._wbusy and self._loop.time() - self._last_send > 1.0:
                self._submit([_TICK])  # answer the peer's tick
            start += need
            need = 4
        if start == end:
            start = end = 0
            if len(buf) > 4 * _RECV_INITIAL:  # shrink after a large packet
                self._rbuf = bytearray(_RECV_INITIAL)
                self._rview = memoryview(self._rbuf)
        elif start + need > len(buf) or len(buf) - end < _RECV_MIN_FREE:
            new = bytearray(max(len(buf), need + _RECV_MIN_FREE))
            new[: end - start] = view[start:end]
            self._rbuf, self._rview = new, memoryview(new)
            end -= start
            start = 0
        self._rstart, self._rend = start, end

    def _on_packet(self, packet: memoryview) -> None:
        if packet[0] != PASS_THROUGH or packet.nbytes < 2 or packet[1] != etf.VERSION:
            raise ValueError(f"unexpected packet type {packet[0]}")
        ctl, pos = etf.decode(packet, 2)
        if not (isinstance(ctl, tuple) and ctl and ctl[0] in _SEND_OPS):
            return  # links, monitors, exits: nothing of ours to act on
        if pos >= packet.nbytes or packet[pos] != etf.VERSION:
            raise ValueError("send control message without a message")
        msg, _ = etf.decode(packet, pos + 1)
        if type(msg) is tuple and len(msg) == 2 and isinstance(msg[0], Reference):
            fut = self._pending.pop(msg[0].ids, None)
            if fut is not None and not fut.done():
                fut.set_result(msg[1])
