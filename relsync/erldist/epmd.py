"""EPMD client: find a node's distribution port (``PORT_PLEASE2_REQ``) and list names.

The EPMD port is ``epmd_port`` if given, else ``$ERL_EPMD_PORT`` (the Erlang convention, so a
target behind a port forward can be found), else 4369.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from relsync.erldist.errors import ConnectTimeout, EpmdUnreachable, NodeNotFound, NotEpmd

DEFAULT_PORT = 4369
PORT_PLEASE2_REQ = 122
PORT2_RESP = 119
NAMES_REQ = 110
DEFAULT_TIMEOUT = 5.0
#: The longest answer read: EPMD's longest (NAMES, a line of at most ~270 bytes per node) stays
#: far below it, so more comes from something else listening on the port.
MAX_ANSWER = 1 << 20


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where a node listens, as EPMD reports it."""

    port: int
    node_type: int  # 77 = normal node, 72 = hidden
    protocol: int  # 0 = TCP/IPv4
    highest_version: int
    lowest_version: int


def epmd_port_or_default(epmd_port: int | None) -> int:
    """Resolve the EPMD port: explicit, else ``$ERL_EPMD_PORT``, else 4369."""
    if epmd_port is not None:
        return epmd_port
    env = os.environ.get("ERL_EPMD_PORT", "").strip()
    return int(env) if env.isdigit() else DEFAULT_PORT


def host_address(host: str) -> str:
    """Map a node's host part to an address to dial.

    IP literals stay as they are; ``localhost`` and this machine's own host name (short or
    fully qualified, as ``-sname`` nodes use it) map to 127.0.0.1; other names are returned
    unchanged for the resolver.
    """
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    local = socket.gethostname()
    if host in ("localhost", local, local.split(".")[0]):
        return "127.0.0.1"
    return host


async def _request(host: str, port: int, request: bytes, timeout: float) -> bytes:
    """Send one EPMD request and read the whole answer (EPMD closes after answering); an
    answer over :data:`MAX_ANSWER` raises :class:`NotEpmd`."""
    address = host_address(host)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(address, port)
            try:
                writer.write(struct.pack(">H", len(request)) + request)
                await writer.drain()
                answer = bytearray()
                while chunk := await reader.read(MAX_ANSWER + 1 - len(answer)):
                    answer += chunk
                    if len(answer) > MAX_ANSWER:
                        raise NotEpmd(host, port, MAX_ANSWER)
                return bytes(answer)
            finally:
                writer.close()
    except TimeoutError:
        raise ConnectTimeout("EPMD request", f"{host}:{port}", timeout) from None
    except OSError as exc:
        raise EpmdUnreachable(host, port, exc.strerror or str(exc)) from None


async def names(
    host: str = "127.0.0.1", epmd_port: int | None = None, timeout: float = DEFAULT_TIMEOUT
) -> dict[str, int]:
    """Return ``{name: port}`` for every node registered with EPMD on ``host``."""
    port = epmd_port_or_default(epmd_port)
    answer = await _request(host, port, bytes([NAMES_REQ]), timeout)
    if len(answer) < 4:
        raise EpmdUnreachable(host, port, "truncated NAMES answer")
    result: dict[str, int] = {}
    for line in answer[4:].decode("utf-8", "replace").splitlines():
        # "name <Name> at port <Port>"
        parts = line.split()
        if len(parts) == 5 and parts[0] == "name" and parts[4].isdigit():
            result[parts[1]] = int(parts[4])
    return result


async def port_please(
    name: str, host: str, epmd_port: int | None = None, timeout: float = DEFAULT_TIMEOUT
) -> NodeAddress:
    """Look up node ``name`` (the part before ``@``) on ``host``; raise NodeNotFound if absent."""
    port = epmd_port_or_default(epmd_port)
    answer = await _request(host, port, bytes([PORT_PLEASE2_REQ]) + name.encode(), timeout)
    if len(answer) < 2 or answer[0] != PORT2_RESP:
        raise EpmdUnreachable(host, port, "unexpected answer to PORT_PLEASE2")
    if answer[1] != 0 or len(answer) < 10:
        try:
            known = list(await names(host, port, timeout))
        except (EpmdUnreachable, ConnectTimeout):
            known = []
        raise NodeNotFound(name, host, known)
    node_port, node_type, protocol, high, low = struct.unpack_from(">HBBHH", answer, 2)
    return NodeAddress(node_port, node_type, protocol, high, low)
