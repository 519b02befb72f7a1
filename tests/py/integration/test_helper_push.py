"""relsync's helper module is pushed to an erl target only when the one loaded there is not the
same code: its ``vsn`` (read from our beam file without a VM) is compared with the loaded one's.
The first reads are sent along with that check, and asked again when the helper was replaced."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.erlnode import ErlNode, run_async

from relsync.beam import attributes, vsn
from relsync.erlc import helper_beam
from relsync.erldist.etf import Atom, Charlist
from relsync.transports.erl import ErlTarget
from relsync.transports.helper import HELPER

pytestmark = pytest.mark.integration


def _stand_in(tmp_path: Path) -> bytes:
    """A different module under the helper's name, as an older relsync would have left."""
    source = tmp_path / f"{HELPER}.erl"
    source.write_text(f"-module({HELPER}).\n-export([old/0]).\nold() -> true.\n")
    subprocess.run(["erlc", "-o", str(tmp_path), str(source)], check=True)
    return (tmp_path / f"{HELPER}.beam").read_bytes()


def test_helper_pushed_once_and_replaced_when_it_differs(
    make_erl_node: Callable[..., ErlNode], tmp_path: Path
) -> None:
    node = make_erl_node()
    ours = run_async(helper_beam(HELPER))

    release = tmp_path / "release"
    for app in ("demo-1", "kernel-8"):
        (release / "lib" / app / "ebin").mkdir(parents=True)
        (release / "lib" / app / "ebin" / f"{app.split('-')[0]}.beam").write_bytes(b"beam")

    async def go() -> None:
        conn = await node.connect()
        try:
            stand_in = _stand_in(tmp_path)
            loaded = await conn.call(
                "code", "load_binary", [Atom(HELPER), Charlist(f"{HELPER}.beam"), stand_in]
            )
            assert loaded == (Atom("module"), Atom(HELPER))

            async def open_close() -> None:
                target = await ErlTarget.open(node.node, node.cookie, epmd_port=node.epmd_port)
                try:  # the first read goes out before the check: the stand-in does not have it
                    seen = await target.read(str(release), ("lib/kernel-",), str(tmp_path / "rw"))
                    assert seen.info.node == node.node and seen.libs == ["demo-1", "kernel-8"]
                    assert set(seen.original) == {"lib/demo-1/ebin/demo.beam"}
                finally:
                    await target.close()

            await open_close()
            attrs = await conn.call("erlang", "get_module_info", [Atom(HELPER), Atom("attributes")])
            assert vsn(attrs) == vsn(attributes(ours)) != vsn(attributes(stand_in))
            assert await conn.call("code", "purge", [Atom(HELPER)]) is not None  # the stand-in
            await open_close()
            # A second push would have left the first one's code as old code.
            assert await conn.call("erlang", "check_old_code", [Atom(HELPER)]) == Atom("false")
        finally:
            await conn.close()

    run_async(go())


def test_attributes_of_a_file_that_is_no_beam() -> None:
    with pytest.raises(ValueError, match="not a beam file"):
        attributes(b"FOR1\x00\x00\x00\x04ELF!")
