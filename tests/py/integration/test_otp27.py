"""Against a real OTP 27 node (Debian trixie's erlang, in a chroot): our node, helper and CLI.

The node runs in ``otp27_rootfs`` (see ``support/otp_rootfs.py``) and shares the host's
network, so it registers with the session's EPMD on 127.0.0.1. Paths it sees are in-tree
paths (``/tmp/...``); ``Rootfs.host_path`` maps them to this side.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.erlnode import ErlNode, run_async
from support.local_board import with_board
from support.otp_rootfs import Rootfs

from relsync.erlc import helper_beam
from relsync.erldist.errors import BadRpc, CookieRejected
from relsync.erldist.etf import Atom, Charlist
from relsync.erldist.node import connect
from relsync.harness.client import run_relsync
from relsync.harness.example import APP_DIR, Variant, build_example_release
from relsync.harness.local import LocalBoard
from relsync.transports.helper import HELPER_MODULES

# The first test may build the tree (mmdebstrap, ~30 s on a fast mirror): allow for a slow one.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


def test_node_is_otp27(otp27_node: ErlNode, otp27_rootfs: Rootfs) -> None:
    assert run_async(otp27_node.call("erlang", "system_info", [Atom("otp_release")])) == "27"
    assert otp27_rootfs.erlang_version.partition(":")[2].startswith("27.")


def test_connect_rpc_badrpc_and_big_binary(otp27_node: ErlNode) -> None:
    async def go() -> None:
        async with await otp27_node.connect() as conn:
            assert await conn.call("erlang", "node", []) == Atom(otp27_node.node)
            reversed_ = await conn.call("lists", "reverse", [[Atom("a"), 1000, b"x"]])
            assert reversed_ == [b"x", 1000, Atom("a")]
            assert await conn.call("erlang", "list_to_binary", [Charlist("héllo")]) == (
                "héllo".encode("latin-1")
            )
            with pytest.raises(BadRpc) as info:
                await conn.call("no_such_module_xyz", "f", [1])
            reason = info.value.reason
            assert isinstance(reason, tuple) and reason[0] == Atom("EXIT")
            assert isinstance(reason[1], tuple) and reason[1][0] == Atom("undef")
            # The connection survives a badrpc.
            big = os.urandom(10 * 1024 * 1024)
            assert await conn.call("erlang", "hd", [[big]]) == big
            digest = await conn.call("crypto", "hash", [Atom("sha256"), big])
            assert digest == hashlib.sha256(big).digest()

    run_async(go())


def test_wrong_cookie_rejected(otp27_node: ErlNode) -> None:
    async def go() -> None:
        await connect(otp27_node.node, cookie="not-the-cookie", epmd_port=otp27_node.epmd_port)

    with pytest.raises(CookieRejected):
        run_async(go())
    # ...and the node still takes the right one.
    assert run_async(otp27_node.call("erlang", "node", [])) == Atom(otp27_node.node)


def test_helper_from_otp25_erlc_loads_and_works(otp27_node: ErlNode, otp27_rootfs: Rootfs) -> None:
    beams = {m: run_async(helper_beam(m)) for m in HELPER_MODULES}
    body = b"hello from the host\n"
    with otp27_rootfs.scratch_dir() as inside:
        tree = otp27_rootfs.host_path(inside) / "tree"
        (tree / "sub").mkdir(parents=True)
        (tree / "a.txt").write_bytes(body)
        (tree / "sub" / "b.bin").write_bytes(b"\x00" * 3000)
        (tree / "sub" / "b.bin").chmod(0o600)
        (tree / "link").symlink_to("a.txt")

        async def go() -> tuple[object, object, object]:
            async with await otp27_node.connect() as conn:
                # Forget any earlier load, so that this one is a real load of our beams.
                loaded = []
                for module, beam in beams.items():
                    await conn.call("code", "purge", [Atom(module)])
                    await conn.call("code", "delete", [Atom(module)])
                    loaded.append(await conn.call(
                        "code", "load_binary", [Atom(module), Charlist(f"{module}.beam"), beam]
                    ))  # fmt: skip
                info = await conn.call("relsync_target", "info", [])
                manifest = await conn.call(
                    "relsync_target", "manifest", [f"{inside}/tree".encode(), {}]
                )
                return loaded, info, manifest

        loaded, info, manifest = run_async(go())
    assert loaded == [(Atom("module"), Atom(m)) for m in HELPER_MODULES]
    assert isinstance(info, dict)
    assert info[Atom("otp_release")] == b"27"
    assert info[Atom("crypto")] == Atom("true")
    assert info[Atom("node")] == Atom(otp27_node.node)
    assert info[Atom("helper_vsn")] == 1
    assert manifest == (
        Atom("ok"),
        [
            (b"a.txt", Atom("regular"), len(body), 0o644, hashlib.sha256(body).digest()),
            (b"link", Atom("symlink"), b"a.txt"),
            (
                b"sub/b.bin",
                Atom("regular"),
                3000,
                0o600,
                hashlib.sha256(b"\x00" * 3000).digest(),
            ),
        ],
    )


def test_cli_syncs_in_place_on_otp27(
    otp27_node: ErlNode, otp27_rootfs: Rootfs, tmp_path: Path
) -> None:
    base = build_example_release()
    v2 = Variant(base, tmp_path / "v2").counter_version(2)
    beam_rel = f"{APP_DIR}/ebin/demo_counter.beam"
    with otp27_rootfs.scratch_dir() as inside:
        dest = f"{inside}/dest"
        host_dest = otp27_rootfs.host_path(dest)
        shutil.copytree(base, host_dest, symlinks=True)
        assert (host_dest / beam_rel).read_bytes() != (v2.root / beam_rel).read_bytes()
        argv = [sys.executable, "-m", "relsync.cli", "-d", otp27_node.node, "-p", dest,
                "-l", str(v2.root), "--json"]  # fmt: skip
        env = dict(
            os.environ, RELSYNC_COOKIE=otp27_node.cookie, ERL_EPMD_PORT=str(otp27_node.epmd_port)
        )
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        report = json.loads(done.stdout)["boards"][0]
        assert report["changed"] == [beam_rel]
        assert (host_dest / beam_rel).read_bytes() == (v2.root / beam_rel).read_bytes()
        assert not list(host_dest.rglob(".relsync-tmp.*"))

        async def go() -> tuple[object, object, object, object]:
            async with await otp27_node.connect() as conn:
                which = await conn.call("code", "which", [Atom("demo_counter")])
                loaded_md5 = await conn.call(
                    "erlang", "get_module_info", [Atom("demo_counter"), Atom("md5")]
                )
                new = await conn.call("beam_lib", "md5", [(v2.root / beam_rel).read_bytes()])
                old = await conn.call("beam_lib", "md5", [(base / beam_rel).read_bytes()])
                return which, loaded_md5, new, old

        which, loaded_md5, new, old = run_async(go())
        # Loaded from the synced file, and it is the new code (plain node: nothing runs it).
        assert which == f"{dest}/{beam_rel}"
        assert new == (Atom("ok"), (Atom("demo_counter"), loaded_md5))
        assert old != new


@pytest.mark.parametrize("mode", ["erl", "ssh"])
def test_a_beam_from_otp27_is_refused_by_an_otp25_board(
    otp27_rootfs: Rootfs, tmp_path: Path, mode: str
) -> None:
    """demo_counter compiled by OTP 27's erlc: it would load on OTP 25, so relsync refuses it
    by its compiler's version, before anything is written."""
    release = build_example_release()
    v2 = Variant(release, tmp_path / "v2")
    with otp27_rootfs.scratch_dir() as inside:
        source = (Path(__file__).parents[3] / "examples/demo/src/demo_counter.erl").read_text()
        otp27_rootfs.host_path(f"{inside}/demo_counter.erl").write_text(
            source.replace("-define(VERSION, 1).", "-define(VERSION, 27).")
        )
        subprocess.run(
            [*otp27_rootfs.command_prefix, "erlc", "-o", inside, f"{inside}/demo_counter.erl"],
            check=True, capture_output=True,
        )  # fmt: skip
        shutil.copy(otp27_rootfs.host_path(f"{inside}/demo_counter.beam"), v2.ebin)

    async def body(board: LocalBoard) -> None:
        before = await board.tree(board.rw_path)
        run = await run_relsync(board, v2.root, "-q", str(board.rw_path), mode=mode)
        assert run.code == 2, run
        assert run.err.count("\n") == 1, run.err
        assert f"{APP_DIR}/ebin/demo_counter.beam was compiled by OTP 27" in run.err, run.err
        assert f"runs OTP {board.otp}" in run.err and board.otp < 27, run.err
        assert await board.tree(board.rw_path) == before
        assert await board.rpc("demo_counter", "version") == 1

    with_board(release, tmp_path / "board", body, mode)
