"""What a peer sends cannot make the distribution client read or allocate without bound."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest

from relsync.erldist import epmd
from relsync.erldist.connection import MAX_PACKET, Connection
from relsync.erldist.errors import ConnectionLost, NotEpmd

#: What the endless server sends at most before it gives up (well over the client's limit).
SERVER_BOUND = 64 << 20
#: A bound on each test, in case the client keeps reading (never reached when it stops).
TEST_BOUND = 60.0


async def _with_endless_server(body: Callable[[int], Awaitable[None]]) -> int:
    """Run ``body(port)`` against a 127.0.0.1 server that answers every connection with bytes
    that never end (until :data:`SERVER_BOUND` or the client goes); return the bytes it sent."""
    sent = 0

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        piece = b"w" * (64 << 10)  # "w" is PORT2_RESP: a reply that starts like EPMD's
        try:
            while sent < SERVER_BOUND:
                writer.write(piece)
                await writer.drain()
                sent += len(piece)
        except OSError:
            pass  # the client closed: what we want
        finally:
            writer.close()

    server = await asyncio.start_server(endless, "127.0.0.1", 0)
    async with server:
        port: int = server.sockets[0].getsockname()[1]
        async with asyncio.timeout(TEST_BOUND):
            await body(port)
    return sent


@pytest.mark.parametrize("request_", ["names", "port_please"])
def test_an_epmd_port_that_keeps_sending_is_not_epmd(request_: str) -> None:
    async def ask(port: int) -> None:
        with pytest.raises(NotEpmd) as info:
            if request_ == "names":
                await epmd.names("127.0.0.1", port)
            else:
                await epmd.port_please("target", "127.0.0.1", port)
        message = str(info.value)
        assert f"127.0.0.1:{port} is not EPMD" in message and "--epmd-port" in message
        assert "\n" not in message

    sent = asyncio.run(_with_endless_server(ask))
    assert sent < SERVER_BOUND  # the client stopped reading long before the server gave up


def test_a_packet_header_over_the_limit_drops_the_link() -> None:
    async def go() -> None:
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        conn = Connection(ours, local_name="me@127.0.0.1", peer_name="p@127.0.0.1", creation=5)
        try:
            peer.sendall(struct.pack(">I", MAX_PACKET + 1))
            peer.close()  # a client without the limit reports only the peer closing, after it
            async with asyncio.timeout(TEST_BOUND):
                while not conn.closed:
                    await asyncio.sleep(0.01)
            with pytest.raises(ConnectionLost) as info:
                await conn.call("erlang", "node", [])
        finally:
            await conn.close()
        message = str(info.value)
        assert f"a packet of {MAX_PACKET + 1} bytes" in message and "64 MiB" in message
        assert "\n" not in message

    asyncio.run(go())
