"""Link liveness against real nodes: a killed or frozen peer fails pending calls at once, ticks
keep an idle link up."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from typing import Any

import pytest
from support.erlnode import ErlNode, run_async

from relsync.erldist.errors import ConnectionLost
from relsync.erldist.etf import Atom, Term

pytestmark = pytest.mark.integration

# Far beyond any test bound: a ConnectionLost can only come from the link, never a timeout.
NO_TIMEOUT = 600.0


def test_node_killed_mid_call(make_erl_node: Callable[..., ErlNode]) -> None:
    node = make_erl_node()

    async def go() -> None:
        conn = await node.connect()
        try:
            sleepers = [
                asyncio.ensure_future(conn.call("timer", "sleep", [600_000], timeout=NO_TIMEOUT))
                for _ in range(5)
            ]
            # rex handles requests in order: once this returns, the sleepers run on the node.
            assert await conn.call("erlang", "node", []) == Atom(node.node)
            node.kill()
            done = await asyncio.gather(*sleepers, return_exceptions=True)
            assert all(isinstance(r, ConnectionLost) for r in done), done
            assert conn.closed
            with pytest.raises(ConnectionLost):
                await conn.call("erlang", "node", [])
        finally:
            await conn.close()

    run_async(go(), timeout=60)


def test_node_killed_mid_transfer(make_erl_node: Callable[..., ErlNode]) -> None:
    node = make_erl_node()
    chunk = bytes(range(256)) * (16 * 1024)  # 4 MiB, referenced (not copied) by every call

    async def go() -> None:
        conn = await node.connect()
        try:
            uploads = [
                asyncio.ensure_future(conn.call("erlang", "byte_size", [chunk], timeout=NO_TIMEOUT))
                for _ in range(60)  # 240 MiB queued behind each other
            ]
            # Killed as soon as the first answer is in: from a callback, not after this
            # coroutine's next turn (on a loaded machine the rest could land meanwhile).
            uploads[0].add_done_callback(lambda _: node.kill())
            assert await uploads[0] == len(chunk)
            results: list[Term | BaseException] = await asyncio.gather(
                *uploads, return_exceptions=True
            )
            lost = [r for r in results if isinstance(r, ConnectionLost)]
            assert lost, "the node was killed while chunks were still in flight"
            assert all(r == len(chunk) or isinstance(r, ConnectionLost) for r in results)
            assert conn.closed
        finally:
            await conn.close()

    run_async(go(), timeout=120)


def test_frozen_peer_detected_by_tick_watchdog(make_erl_node: Callable[..., ErlNode]) -> None:
    node = make_erl_node(net_ticktime=4)  # the node ticks every second

    async def go() -> None:
        conn = await node.connect(tick_interval=1.0)
        try:
            sleeper = asyncio.ensure_future(
                conn.call("timer", "sleep", [600_000], timeout=NO_TIMEOUT)
            )
            assert await conn.call("erlang", "node", []) == Atom(node.node)
            node.proc.send_signal(signal.SIGSTOP)  # alive but silent, like a hung board
            try:
                with pytest.raises(ConnectionLost) as info:
                    await sleeper
                assert "no data or tick" in str(info.value)
            finally:
                node.proc.send_signal(signal.SIGCONT)
        finally:
            await conn.close()

    run_async(go(), timeout=60)


def test_close_fails_pending_calls(erl_node: ErlNode) -> None:
    async def go() -> None:
        conn = await erl_node.connect()
        sleeper = asyncio.ensure_future(conn.call("timer", "sleep", [5000], timeout=NO_TIMEOUT))
        assert await conn.call("erlang", "node", []) == Atom(erl_node.node)
        await conn.close()
        with pytest.raises(ConnectionLost):
            await sleeper
        await conn.close()  # idempotent

    run_async(go(), timeout=60)


@pytest.mark.slow
def test_idle_link_kept_alive_by_ticks(make_erl_node: Callable[..., ErlNode]) -> None:
    node = make_erl_node()  # default net_ticktime: 60 s

    async def go() -> None:
        async with await node.connect() as conn:
            assert await conn.call("net_kernel", "get_net_ticktime", []) == 60
            idle = asyncio.get_running_loop().create_future()
            # 75 s of silence from us: without ticks the node drops the link at ~60 s.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(idle, 75)
            assert not conn.closed
            hidden = await conn.call("erlang", "nodes", [Atom("hidden")])
            assert Atom(conn.local_name) in hidden

    run_async(go(), timeout=200)


class _CountingSocket:
    """The link's socket, counting the send system calls made on it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.sends: list[int] = []

    def send(self, data: bytes) -> int:
        self.sends.append(len(data))
        return self._sock.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_requests_of_one_iteration_share_one_send(erl_node: ErlNode) -> None:
    """A sync asks a board several things at once: the small requests issued in one event-loop
    iteration leave in one send, in order, and a large one issued after them still comes last."""

    async def go() -> None:
        async with await erl_node.connect() as conn:
            counting = _CountingSocket(conn._sock)
            conn._sock = counting  # type: ignore[assignment]
            calls = [conn.call("erlang", "abs", [-n]) for n in range(1, 6)]
            assert await asyncio.gather(*calls) == [1, 2, 3, 4, 5]
            assert len(counting.sends) == 1, counting.sends
            # A process that never reads keeps its messages in arrival order.
            sleep = [Atom("timer"), Atom("sleep"), [Atom("infinity")]]
            pid = await conn.call("erlang", "spawn", sleep)
            await conn.call("erlang", "register", [Atom("relsync_test_inbox"), pid])
            big = b"x" * (256 * 1024)
            for message in (1, 2, big, 3):
                conn.send_reg("relsync_test_inbox", message)
            inbox = await conn.call("erlang", "process_info", [pid, Atom("messages")])
            assert inbox == (Atom("messages"), [1, 2, big, 3])
            await conn.call("erlang", "exit", [pid, Atom("kill")])

    run_async(go(), timeout=60)
