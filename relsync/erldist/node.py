"""Connect to an Erlang node as a hidden node: EPMD lookup, TCP connect, handshake.

>>> # conn = await connect("target@127.0.0.1", cookie="secret")
>>> # await conn.call("erlang", "node", [])
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket

from relsync.erldist import epmd
from relsync.erldist.connection import DEFAULT_TICK, Connection
from relsync.erldist.errors import ConnectTimeout, HandshakeRefused
from relsync.erldist.etf import Term
from relsync.erldist.handshake import VERSION, client_handshake, new_creation

__all__ = ["Connection", "connect", "split_node_name"]


def split_node_name(node: str) -> tuple[str, str]:
    """Split ``name@host``; raise ValueError if either part is missing."""
    name, sep, host = node.partition("@")
    if not sep or not name or not host or "@" in host:
        raise ValueError(f"not a node name (expected name@host): {node!r}")
    return name, host


def is_long_name(host: str) -> bool:
    """True if ``host`` is the host part of a long (``-name``) node name."""
    if "." in host:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def default_local_name(peer_host: str) -> str:
    """``relsync_<pid>_<rand>@<host>`` in the peer's style (long or short)."""
    if is_long_name(peer_host):
        address = epmd.host_address(peer_host)
        try:
            loopback = ipaddress.ip_address(address).is_loopback
        except ValueError:
            loopback = False
        host = "127.0.0.1" if loopback else socket.getfqdn()
    else:
        host = socket.gethostname().split(".")[0]
    return f"relsync_{os.getpid()}_{os.urandom(3).hex()}@{host}"


async def _resolve(
    loop: asyncio.AbstractEventLoop, address: str, port: int
) -> tuple[int, int, tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]]:
    """(family, protocol, socket address) to dial; an IP literal (the usual case) without
    asking the resolver, which runs in a thread of its own."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        infos = await loop.getaddrinfo(address, port, type=socket.SOCK_STREAM)
        family, _, proto, _, sockaddr = infos[0]
        return family, proto, sockaddr
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), 0, (address, port)


async def connect(
    node: str,
    cookie: str,
    local_name: str | None = None,
    epmd_port: int | None = None,
    timeout: float = 5.0,
    *,
    tick_interval: float = DEFAULT_TICK,
) -> Connection:
    """Connect to ``node`` (``name@host``) and return an open :class:`Connection`.

    EPMD is asked on the node's host part, at ``epmd_port`` (default ``$ERL_EPMD_PORT`` or
    4369). ``timeout`` bounds the whole connect. ``tick_interval`` is net_ticktime / 4.
    """
    name, host = split_node_name(node)
    local = local_name or default_local_name(host)
    split_node_name(local)
    loop = asyncio.get_running_loop()
    step, address = "EPMD lookup", f"{host}:{epmd.epmd_port_or_default(epmd_port)}"
    sock: socket.socket | None = None
    try:
        async with asyncio.timeout(timeout):
            found = await epmd.port_please(name, host, epmd_port, timeout)
            if not found.lowest_version <= VERSION <= found.highest_version:
                raise HandshakeRefused(
                    node,
                    f"it speaks distribution versions {found.lowest_version}-"
                    f"{found.highest_version}, we speak {VERSION}",
                    "use a target on OTP 25 or later",
                )
            step, address = "TCP connect", f"{host}:{found.port}"
            family, proto, sockaddr = await _resolve(loop, epmd.host_address(host), found.port)
            sock = socket.socket(family, socket.SOCK_STREAM, proto)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, sockaddr)
            step = "handshake"
            creation = new_creation()
            peer = await client_handshake(
                sock, local_name=local, peer_name=node, cookie=cookie, creation=creation
            )
    except TimeoutError:
        if sock is not None:
            sock.close()
        raise ConnectTimeout(step, address, timeout) from None
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise HandshakeRefused(
            node, f"{step} to {address} failed: {exc.strerror or exc}", "check the target is up"
        ) from None
    except BaseException:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        raise
    return Connection(
        sock,
        local_name=local,
        peer_name=peer.name,
        creation=creation,
        peer_flags=peer.flags,
        tick_interval=tick_interval,
    )


async def call_once(
    node: str,
    cookie: str,
    epmd_port: int | None,
    call: tuple[str, str, list[Term]],
    *,
    connect_timeout: float = 5.0,
    timeout: float = 30.0,
) -> Term:
    """``module:function(args...)`` on ``node`` over a connection of its own, closed after."""
    conn = await connect(node, cookie=cookie, epmd_port=epmd_port, timeout=connect_timeout)
    try:
        return await conn.call(*call, timeout=timeout)
    finally:
        await conn.close()
