"""Connecting to real local nodes: long and short names, and every way a connect can fail."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from support.erlnode import ErlNode, free_port, run_async

from relsync.erldist import handshake
from relsync.erldist.epmd import names
from relsync.erldist.errors import (
    ConnectTimeout,
    CookieRejected,
    DistError,
    EpmdUnreachable,
    FlagsRefused,
    NameMismatch,
    NodeNotFound,
)
from relsync.erldist.etf import Atom
from relsync.erldist.node import connect

pytestmark = pytest.mark.integration


def test_connect_long_name(erl_node: ErlNode) -> None:
    async def go() -> None:
        async with await connect(
            erl_node.node, cookie=erl_node.cookie, epmd_port=erl_node.epmd_port
        ) as conn:
            assert conn.peer_name == erl_node.node
            assert not conn.closed
            assert await conn.call("erlang", "node", []) == Atom(erl_node.node)
            assert conn.local_name.startswith("relsync_")
            assert conn.local_name.endswith("@127.0.0.1")
            # We are a hidden node: listed in nodes(hidden), never in nodes().
            assert Atom(conn.local_name) in await conn.call("erlang", "nodes", [Atom("hidden")])
            assert Atom(conn.local_name) not in await conn.call("erlang", "nodes", [])
        assert conn.closed

    run_async(go())


def test_connect_short_name(erl_short_node: ErlNode) -> None:
    async def go() -> None:
        conn = await connect(
            erl_short_node.node, cookie=erl_short_node.cookie, epmd_port=erl_short_node.epmd_port
        )
        try:
            assert await conn.call("erlang", "node", []) == Atom(erl_short_node.node)
            assert "." not in conn.local_name.partition("@")[2]
        finally:
            await conn.close()

    run_async(go())


def test_explicit_local_name_and_env_epmd_port(
    erl_node: ErlNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ERL_EPMD_PORT", str(erl_node.epmd_port))

    async def go() -> None:
        async with await connect(
            erl_node.node, cookie=erl_node.cookie, local_name="explicit_name@127.0.0.1"
        ) as conn:
            assert await conn.call("erlang", "nodes", [Atom("hidden")]) is not None
            assert Atom("explicit_name@127.0.0.1") in await conn.call(
                "erlang", "nodes", [Atom("hidden")]
            )

    run_async(go())


def test_names_lists_registered_nodes(erl_node: ErlNode) -> None:
    found = run_async(names("127.0.0.1", erl_node.epmd_port))
    assert erl_node.name in found
    assert found[erl_node.name] > 0


def test_wrong_cookie(erl_node: ErlNode) -> None:
    secret = "definitely-wrong-cookie-value"

    async def go() -> None:
        await connect(erl_node.node, cookie=secret, epmd_port=erl_node.epmd_port)

    with pytest.raises(CookieRejected) as info:
        run_async(go())
    text = str(info.value)
    assert "\n" not in text and "cookie" in text
    assert secret not in text and erl_node.cookie not in text


def test_unknown_node(erl_node: ErlNode) -> None:
    async def go() -> None:
        await connect("nosuchnode@127.0.0.1", cookie="x", epmd_port=erl_node.epmd_port)

    with pytest.raises(NodeNotFound) as info:
        run_async(go())
    assert info.value.name == "nosuchnode"
    assert erl_node.name in info.value.known
    assert erl_node.name in str(info.value)


def test_epmd_unreachable() -> None:
    port = free_port()  # nothing listens there

    with pytest.raises(EpmdUnreachable) as info:
        run_async(connect("x@127.0.0.1", cookie="x", epmd_port=port))
    assert str(port) in str(info.value)
    with pytest.raises(EpmdUnreachable):
        run_async(names("127.0.0.1", port))


def test_name_mismatch(erl_node: ErlNode) -> None:
    # EPMD on localhost knows the name, but the node calls itself name@127.0.0.1.
    wrong = f"{erl_node.name}@localhost"
    with pytest.raises(NameMismatch) as info:
        run_async(connect(wrong, cookie=erl_node.cookie, epmd_port=erl_node.epmd_port))
    assert info.value.got == erl_node.node


def test_missing_flags_refused(erl_node: ErlNode) -> None:
    async def go() -> None:
        port = (await names("127.0.0.1", erl_node.epmd_port))[erl_node.name]
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await handshake.client_handshake(
                sock,
                local_name="oldflags@127.0.0.1",
                peer_name=erl_node.node,
                cookie=erl_node.cookie,
                creation=handshake.new_creation(),
                flags=handshake.DFLAG_HANDSHAKE_23 | handshake.DFLAG_EXTENDED_REFERENCES,
            )
        finally:
            sock.close()

    with pytest.raises(FlagsRefused):
        run_async(go())


def test_not_a_node_name() -> None:
    with pytest.raises(ValueError):
        run_async(connect("no-at-sign", cookie="x"))


async def _hanging_server(on_accept: bytes = b"") -> tuple[asyncio.Server, int]:
    """A listener that accepts and then never answers (like a slirp forward to nothing)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if on_accept:
            await reader.read(1024)
            writer.write(on_accept)
            writer.close()
            return
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_connect_timeout_epmd_hangs() -> None:
    async def go() -> None:
        server, port = await _hanging_server()
        async with server:
            await connect("x@127.0.0.1", cookie="x", epmd_port=port, timeout=0.5)

    with pytest.raises(ConnectTimeout) as info:
        run_async(go(), timeout=30)
    assert "timed out" in str(info.value)


def test_connect_timeout_handshake_hangs() -> None:
    async def go() -> None:
        dist, dist_port = await _hanging_server()
        # A fake EPMD pointing at the hanging "node": PORT2_RESP ok, version 6.
        answer = struct.pack(">BBHBBHHH", 119, 0, dist_port, 77, 0, 6, 6, 1) + b"x\0\0"
        epmd, epmd_port = await _hanging_server(on_accept=answer)
        async with dist, epmd:
            await connect("x@127.0.0.1", cookie="x", epmd_port=epmd_port, timeout=0.5)

    with pytest.raises(ConnectTimeout) as info:
        run_async(go(), timeout=30)
    assert info.value.step == "handshake"


def test_errors_are_one_line_dist_errors() -> None:
    for exc in (
        EpmdUnreachable("h", 1, "refused"),
        NodeNotFound("n", "h", ["a", "b"]),
        ConnectTimeout("handshake", "h:1", 1.0),
        CookieRejected("n@h"),
        FlagsRefused("n@h"),
        NameMismatch("a@h", "b@h"),
    ):
        assert isinstance(exc, DistError)
        assert "\n" not in str(exc)
