"""Link liveness against real nodes: a killed or frozen peer fails pending calls at once, ticks
keep an idle link up."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import pytest
from support.erlnode import ErlNode, run_async

from relsync.dist.errors import ConnectionLost
from relsync.dist.etf import Atom, Term

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
            done, _ = await asyncio.wait(uploads, return_when=asyncio.FIRST_COMPLETED)
            assert next(iter(done)).result() == len(chunk)
            node.kill()
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
