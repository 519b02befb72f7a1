"""A board's real link on 127.0.0.1: a userspace token-bucket proxy with a delay line.

Real boards sit behind USB gadget Ethernet (~100 Mbit/s) or Wi-Fi (~20 Mbit/s). A
:class:`Link` carries every connection of a benchmark to a board through one token bucket a
direction (the connections share the link, as they would), then holds each piece for the
link's one-way delay. It listens and connects on 127.0.0.1 only, and counts the bytes it
carries each way (the bytes on the wire, the same measure for every tool).

``Link.forward(port)`` gives a port that leads to ``port``; ``Link.epmd(port)`` gives an EPMD
port that answers for the EPMD at ``port`` with the port of a forward to the node, so a
distribution connection goes through the link too.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field

HOST = "127.0.0.1"
#: The most a piece carries: a few milliseconds of the slowest link.
PIECE = 16 << 10
#: The bucket's depth: two pieces, so a sleep that overran (a busy machine) is made up for and
#: the link carries its rate on average.
BURST = 2 * PIECE
#: Pieces held in the delay line of one connection before its reader waits.
QUEUED = 64
PORT_PLEASE2_REQ, PORT2_RESP = 122, 119


class _Bucket:
    """Bytes a second, in bursts of at most :data:`BURST`, shared by every connection."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = float(BURST)
        self.stamp = asyncio.get_running_loop().time()
        self.lock = asyncio.Lock()

    async def take(self, nbytes: int) -> None:
        async with self.lock:
            loop = asyncio.get_running_loop()
            while True:
                now = loop.time()
                self.tokens = min(float(BURST), self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= nbytes:
                    self.tokens -= nbytes
                    return
                await asyncio.sleep((nbytes - self.tokens) / self.rate)


@dataclass
class Link:
    """A link of ``mbit`` Mbit/s each way with ``delay_ms`` of one-way delay."""

    mbit: float
    delay_ms: float
    #: Bytes carried towards the board and back since the last :meth:`reset`.
    up: int = 0
    down: int = 0
    _servers: list[asyncio.Server] = field(default_factory=list)
    _forwards: dict[int, int] = field(default_factory=dict)
    _buckets: tuple[_Bucket, _Bucket] | None = None

    def reset(self) -> None:
        """Start counting bytes again."""
        self.up = self.down = 0

    def _bucket(self, towards_board: bool) -> _Bucket:
        if self._buckets is None:
            rate = self.mbit * 1e6 / 8
            self._buckets = (_Bucket(rate), _Bucket(rate))
        return self._buckets[0 if towards_board else 1]

    async def forward(self, port: int) -> int:
        """A port on 127.0.0.1 whose connections reach ``port`` through the link."""
        if port not in self._forwards:
            server = await asyncio.start_server(
                lambda r, w: self._connect(r, w, port), HOST, 0
            )  # fmt: skip
            self._servers.append(server)
            self._forwards[port] = server.sockets[0].getsockname()[1]
        return self._forwards[port]

    async def epmd(self, port: int) -> int:
        """An EPMD port answering for the EPMD at ``port``, with ports of forwards."""
        server = await asyncio.start_server(lambda r, w: self._epmd(r, w, port), HOST, 0)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening (connections end with their peers)."""
        for server in self._servers:
            server.close()
        self._servers.clear()

    async def _connect(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, port: int
    ) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(HOST, port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            self._pipe(client_r, server_w, towards_board=True),
            self._pipe(server_r, client_w, towards_board=False),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, towards_board: bool
    ) -> None:
        """One direction: read, wait for the bucket, hold for the delay, write."""
        loop = asyncio.get_running_loop()
        line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUED)
        bucket = self._bucket(towards_board)

        async def deliver() -> None:
            while True:
                due, data = await line.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        delivering = asyncio.ensure_future(deliver())
        try:
            while data := await reader.read(PIECE):
                await bucket.take(len(data))
                if towards_board:
                    self.up += len(data)
                else:
                    self.down += len(data)
                await line.put((loop.time() + self.delay_ms / 1000, data))
            await line.put((loop.time() + self.delay_ms / 1000, b""))
            await delivering
        except OSError:
            delivering.cancel()
        finally:
            writer.close()

    async def _epmd(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, port: int
    ) -> None:
        """One EPMD request, answered by the real EPMD; a node's port is replaced by the port
        of a forward to it."""
        try:
            (size,) = struct.unpack(">H", await client_r.readexactly(2))
            request = await client_r.readexactly(size)
            epmd_r, epmd_w = await asyncio.open_connection(HOST, port)
            epmd_w.write(struct.pack(">H", size) + request)
            answer = await epmd_r.read()
            epmd_w.close()
            if request[:1] == bytes([PORT_PLEASE2_REQ]) and answer[:2] == bytes([PORT2_RESP, 0]):
                (node_port,) = struct.unpack_from(">H", answer, 2)
                answer = answer[:2] + struct.pack(">H", await self.forward(node_port)) + answer[4:]
            await asyncio.sleep(2 * self.delay_ms / 1000)
            client_w.write(answer)
            await client_w.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            client_w.close()
