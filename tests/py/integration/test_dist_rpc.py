"""RPC over ``rex`` against real nodes: results, badrpc, concurrency, timeouts, code loading."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
from support.erlnode import ErlNode, compile_erl, run_async, unique_name

from relsync.erldist.errors import BadRpc, RpcTimeout
from relsync.erldist.etf import Atom, Charlist, Pid, Port, Reference

pytestmark = pytest.mark.integration


def test_results_round_trip(erl_node: ErlNode) -> None:
    term = (Atom("ok"), [1, -2, 3.5, 2**70], b"bin", Charlist("abc"), {Atom("k"): (1, 2)})

    async def go() -> None:
        async with await erl_node.connect() as conn:
            assert await conn.call("lists", "reverse", [[1, 2, 300]]) == [300, 2, 1]
            assert await conn.call("erlang", "hd", [[term]]) == term
            assert isinstance(await conn.call("erlang", "self", []), Pid)
            ref = await conn.call("erlang", "make_ref", [])
            assert isinstance(ref, Reference) and ref.node == erl_node.node
            assert isinstance(
                await conn.call("erlang", "hd", [await conn.call("erlang", "ports", [])]), Port
            )
            # A large reply exercises the growing receive buffer.
            big = os.urandom(9 * 1024 * 1024 + 17)
            assert await conn.call("erlang", "hd", [[big]]) == big
            assert await conn.call("erlang", "node", []) == Atom(erl_node.node)

    run_async(go())


def test_badrpc(erl_node: ErlNode) -> None:
    async def go() -> None:
        async with await erl_node.connect() as conn:
            with pytest.raises(BadRpc) as info:
                await conn.call("no_such_module_xyz", "f", [1])
            reason = info.value.reason
            assert isinstance(reason, tuple) and reason[0] == Atom("EXIT")
            assert reason[1][0] == Atom("undef")
            assert "no_such_module_xyz:f/1" in str(info.value)
            with pytest.raises(BadRpc) as info:
                await conn.call("erlang", "error", [Atom("boom")])
            assert info.value.reason[1][0] == Atom("boom")
            # The link survives a badrpc.
            assert await conn.call("erlang", "node", []) == Atom(erl_node.node)

    run_async(go())


def test_many_concurrent_calls(erl_node: ErlNode) -> None:
    async def go() -> None:
        async with await erl_node.connect() as conn:
            results = await asyncio.gather(
                *(conn.call("erlang", "phash2", [[i, b"x" * (i % 7)]]) for i in range(2000))
            )
            expected = await asyncio.gather(
                *(conn.call("erlang", "phash2", [[i, b"x" * (i % 7)]]) for i in range(2000))
            )
            assert results == expected
            assert len(set(results)) > 1900
            # Replies are matched by reference, not by order: slow and fast calls interleave.
            slow = asyncio.ensure_future(conn.call("timer", "sleep", [300]))
            fast = await asyncio.gather(*(conn.call("erlang", "abs", [-i]) for i in range(50)))
            assert fast == list(range(50))
            assert not slow.done() or slow.result() == Atom("ok")
            assert await slow == Atom("ok")

    run_async(go())


def test_rpc_timeout_keeps_link(erl_node: ErlNode) -> None:
    async def go() -> None:
        async with await erl_node.connect() as conn:
            with pytest.raises(RpcTimeout) as info:
                await conn.call("timer", "sleep", [1500], timeout=0.1)
            assert "timer:sleep/1" in str(info.value)
            assert not conn.closed
            assert await conn.call("erlang", "node", []) == Atom(erl_node.node)
            # The late reply arrives and is dropped; the link stays healthy.
            await conn.call("timer", "sleep", [1600])
            assert await conn.call("erlang", "abs", [-5]) == 5

    run_async(go())


HELLO = """-module({mod}).
-export([hello/1]).
hello(X) -> {{hello, X, ?MODULE}}.
"""


def test_load_binary_compiled_by_erlc(erl_node: ErlNode, tmp_path: Path) -> None:
    mod = unique_name("relsync_dist_hello_")
    src = tmp_path / f"{mod}.erl"
    src.write_text(HELLO.format(mod=mod))
    beam = compile_erl(src, tmp_path / "ebin")
    code = beam.read_bytes()

    async def go() -> None:
        async with await erl_node.connect() as conn:
            m = Atom(mod)
            assert await conn.call("code", "soft_purge", [m]) == Atom("true")
            loaded = await conn.call("code", "load_binary", [m, Charlist(str(beam)), code])
            assert loaded == (Atom("module"), m)
            assert await conn.call(mod, "hello", [42]) == (Atom("hello"), 42, m)
            md5 = await conn.call(mod, "module_info", [Atom("md5")])
            assert isinstance(md5, bytes) and len(md5) == 16

    run_async(go())


SINK = """-module({mod}).
-export([append/2, sha256/1]).
append(Path, Bin) -> ok = file:write_file(Path, Bin, [append, raw]), byte_size(Bin).
sha256(Path) -> {{ok, B}} = file:read_file(Path), {{byte_size(B), crypto:hash(sha256, B)}}.
"""


@pytest.mark.slow
def test_100_mib_transfer_intact(erl_node: ErlNode, tmp_path: Path) -> None:
    mod = unique_name("relsync_dist_sink_")
    src = tmp_path / f"{mod}.erl"
    src.write_text(SINK.format(mod=mod))
    code = compile_erl(src, tmp_path / "ebin").read_bytes()
    target = Charlist(str(tmp_path / "received.bin"))
    chunk_size, chunks = 4 * 1024 * 1024, 25

    async def go() -> None:
        digest = hashlib.sha256()
        async with await erl_node.connect() as conn:
            await conn.call("code", "load_binary", [Atom(mod), Charlist(str(src)), code])
            for i in range(chunks):
                chunk = os.urandom(chunk_size) if i % 5 == 0 else bytes([i]) * chunk_size
                digest.update(chunk)
                assert await conn.call(mod, "append", [target, chunk], timeout=120) == chunk_size
            size, remote = await conn.call(mod, "sha256", [target], timeout=120)
        assert size == chunk_size * chunks
        assert remote == digest.digest()

    run_async(go(), timeout=280)
