"""Distribution node benchmark: handshake, RPC latency and rate, upload throughput.

Compared side by side in one run with an Erlang hidden node doing the same ``rpc:call`` loop
(measured inside ``erl``) and with raw loopback TCP between two Python processes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.table import Row
from relsync.erldist.connection import Connection

# The node/EPMD starters live with the tests; reuse them rather than duplicating them here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "py"))
from support.erlnode import Epmd, ErlNode, compile_erl, unique_name

MIB = 1024 * 1024
CHUNK = 4 * MIB
SIZES_MIB = (1, 10, 100)
SEQUENTIAL_CALLS = 1000
CONCURRENT_CALLS = 5000
#: A quick run's sizes and call counts.
QUICK_SIZES_MIB = (1,)
QUICK_CALLS = 50

ERL_LOOP = """-module(relsync_rpc_bench).
-export([main/1]).
%% Median microseconds of N sequential rpc:call(Target, erlang, node, []) from a hidden node.
main([Target, N]) ->
    T = list_to_atom(atom_to_list(Target)),
    Count = list_to_integer(atom_to_list(N)),
    true = net_kernel:hidden_connect_node(T),
    [rpc:call(T, erlang, node, []) || _ <- lists:seq(1, 200)],
    Ts = lists:sort([element(1, timer:tc(rpc, call, [T, erlang, node, []]))
                     || _ <- lists:seq(1, Count)]),
    io:format("median_us=~p~n", [lists:nth(Count div 2, Ts)]),
    halt().
"""

RAW_SERVER = """
import socket, struct, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
buf = bytearray(1 << 20); view = memoryview(buf)
while True:
    head = conn.recv(8, socket.MSG_WAITALL)
    if len(head) < 8:
        break
    (size,) = struct.unpack(">Q", head)
    while size:
        size -= conn.recv_into(view[: min(size, len(buf))])
    conn.sendall(b"k")
"""


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


async def _handshake_ms(node: ErlNode, rounds: int = 30) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        conn = await node.connect()
        samples.append(time.perf_counter() - start)
        await conn.close()
    return statistics.median(samples) * 1e3


async def _rpc_median_us(conn: Connection, calls: int) -> float:
    for _ in range(min(200, calls)):
        await conn.call("erlang", "node", [])
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        await conn.call("erlang", "node", [])
        samples.append(time.perf_counter() - start)
    return _median_us(samples)


async def _rpc_rate(conn: Connection, calls: int) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(conn.call("erlang", "node", []) for _ in range(calls)))
    return calls / (time.perf_counter() - start)


async def _upload_mb_s(conn: Connection, size: int) -> float:
    chunk = os.urandom(CHUNK)
    start = time.perf_counter()
    left = size
    while left:
        piece = chunk if left >= CHUNK else chunk[:left]
        assert await conn.call("erlang", "byte_size", [piece]) == len(piece)
        left -= len(piece)
    return size / (time.perf_counter() - start) / 1e6


async def _best_of(
    fn: Callable[[Connection, int], Awaitable[float]], conn: Connection, size: int
) -> float:
    """Best of a few runs (more for small sizes, where one scheduling hiccup dominates)."""
    return max([await fn(conn, size) for _ in range(max(1, 3 * CHUNK // size + 1))])


async def _raw_tcp_mb_s(sizes: list[int]) -> list[float]:
    """Raw loopback TCP: our client (sock_sendall) to a Python server process that discards."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RAW_SERVER, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    port = int((await proc.stdout.readline()).decode())
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    chunk = os.urandom(CHUNK)
    results = []
    try:
        for size in sizes:
            start = time.perf_counter()
            left = size
            while left:
                piece = memoryview(chunk)[: min(left, CHUNK)]
                await loop.sock_sendall(sock, struct.pack(">Q", len(piece)))
                await loop.sock_sendall(sock, piece)
                assert await loop.sock_recv(sock, 1) == b"k"  # same round trip per chunk
                left -= len(piece)
            results.append(size / (time.perf_counter() - start) / 1e6)
    finally:
        sock.close()
        await proc.wait()
    return results


def _erlang_rpc_median_us(node: ErlNode, workdir: Path, calls: int) -> float:
    src = workdir / "relsync_rpc_bench.erl"
    src.write_text(ERL_LOOP)
    ebin = compile_erl(src, workdir / "ebin").parent
    erl = shutil.which("erl") or "erl"
    out = subprocess.run(
        [erl, "-noshell", "-hidden", "-name", f"{unique_name('bench')}@127.0.0.1",
         "-setcookie", node.cookie, "-start_epmd", "false", "-pa", str(ebin),
         "-s", "relsync_rpc_bench", "main", node.node, str(calls)],
        env={**os.environ, "ERL_EPMD_PORT": str(node.epmd_port)},
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    return float(out.split("median_us=")[1].split()[0])


async def _measure(node: ErlNode, workdir: Path, quick: bool) -> list[Row]:
    rows: list[Row] = []
    sizes = QUICK_SIZES_MIB if quick else SIZES_MIB
    calls, concurrent = (QUICK_CALLS, QUICK_CALLS) if quick else (SEQUENTIAL_CALLS,
                                                                   CONCURRENT_CALLS)  # fmt: skip
    hs = await _handshake_ms(node, 3 if quick else 30)
    rows.append(Row("dist", "connect + handshake", f"{hs:.2f} ms", "", "<= 2 ms", hs <= 2.0))
    erl_us = _erlang_rpc_median_us(node, workdir, calls)
    async with await node.connect() as conn:
        us = await _rpc_median_us(conn, calls)
        rows.append(
            Row("dist", f"rpc median ({calls} sequential)", f"{us:.0f} us",
                f"erlang hidden node {erl_us:.0f} us", "<= 150 us", us <= 150)
        )  # fmt: skip
        rate = await _rpc_rate(conn, concurrent)
        rows.append(Row("dist", f"rpc rate ({concurrent} concurrent)", f"{rate:,.0f}/s"))
        await _upload_mb_s(conn, 8 * MIB)  # warm-up: the target grows its buffers once
        ours = [await _best_of(_upload_mb_s, conn, n * MIB) for n in sizes]
    raw = [max(r) for r in zip(*[await _raw_tcp_mb_s([n * MIB for n in sizes])
                                 for _ in range(1 if quick else 3)], strict=True)]  # fmt: skip
    for n, mine, base in zip(sizes, ours, raw, strict=True):
        rows.append(
            Row("dist", f"upload {n} MiB (4 MiB rpc chunks)", f"{mine:,.0f} MB/s",
                f"raw loopback TCP {base:,.0f} MB/s", ">= 50% of raw",
                mine >= 0.5 * base)
        )  # fmt: skip
    return rows


def run(quick: bool = False) -> list[Row]:
    """Start an EPMD and a node of our own, measure, stop them; return the table rows
    (``quick``: few calls, one size)."""
    workdir = Path(tempfile.mkdtemp(prefix="relsync_bench_"))
    try:
        with (
            Epmd.start() as epmd,
            ErlNode.start(
                epmd_port=epmd.port, name=unique_name("bench_target"), workdir=workdir / "node"
            ) as node,
        ):
            return asyncio.run(_measure(node, workdir, quick))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
