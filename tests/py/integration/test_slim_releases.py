"""Releases as rebar3 builds them besides the default, on a real node from a read-only path:
slim ones that leave OTP's libraries to the board's OTP (``system_libs false``), with or
without crypto in them, and relx dev mode (applications symlinked back into the project)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import relsync
from support.local_board import with_board
from support.slim import DEV_MODE, NO_CRYPTO, SYSTEM_LIBS_FALSE, rebar3_release

from relsync.erldist.etf import Atom
from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("crypto", [True, False], ids=["crypto", "no-crypto"])
def test_a_slim_release_syncs_only_what_it_carries(tmp_path: Path, mode: str, crypto: bool) -> None:
    edits = [SYSTEM_LIBS_FALSE] + ([] if crypto else [NO_CRYPTO])
    v1 = rebar3_release(tmp_path / "v1", *edits)
    v2 = rebar3_release(tmp_path / "v2", *edits, counter_version=2)
    assert [p.name for p in (v1 / "lib").iterdir()] == ["demo-0.1.0"]  # OTP's are the board's

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        for exclude in ("true", "false"):  # -E false: still nothing of OTP's to sync
            run = await relsync(board, v2, "-q", rw, "-E", exclude, "--json")
            assert run.code == 0, run.err
            # Crypto is taken from beside the board's OTP when the release lacks it.
            assert run.report["hash"] == "sha256"
            written = [w.removeprefix(f"{rw}/") for w in run.report["written"]]
            assert all(w.startswith(("lib/demo-", "releases/", "bin/")) for w in written)
        assert await board.rpc("demo_counter", "version") == 2
        assert (await relsync(board, v2, "-q", rw, "--json")).report["written"] == []

    with_board(v1, tmp_path / "board", body, mode)


def test_a_dev_mode_release_is_synced_through_its_links(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    dev = rebar3_release(tmp_path / "project", DEV_MODE, counter_version=2)
    assert (dev / "lib" / "demo-0.1.0").is_symlink()

    async def body(board: LocalBoard) -> None:
        run = await relsync(board, dev, "-q", str(board.rw_path), "--json")
        assert run.code == 0, run.err
        assert "Traceback" not in run.err
        assert "demo_counter" in run.report["reload"]  # all, compiled in another directory
        assert await board.rpc("demo_counter", "version") == 2
        which = await board.rpc("code", "which", [Atom("demo_counter")])
        assert isinstance(which, str) and which.startswith(str(board.rw_path))

    with_board(demo_release, tmp_path / "board", body, mode)


def test_an_application_the_board_lacks_is_refused(tmp_path: Path, mode: str) -> None:
    v1 = rebar3_release(tmp_path / "v1", SYSTEM_LIBS_FALSE)
    v2 = rebar3_release(tmp_path / "v2", SYSTEM_LIBS_FALSE, counter_version=2)
    rel = v2 / "releases" / "0.1.0" / "demo.rel"
    rel.write_text(rel.read_text().replace('{sasl,"4.2"}', '{sasl,"4.2"},\n {os_fun,"1.0"}', 1))
    assert "os_fun" in rel.read_text()

    async def body(board: LocalBoard) -> None:
        run = await relsync(board, v2, "-q", str(board.rw_path))
        assert run.code == 2, run
        assert run.err.count("\n") == 1 and "the release needs os_fun" in run.err, run.err
        assert list(board.rw_path.iterdir()) == []
        assert await board.rpc("demo_counter", "version") == 1

    with_board(v1, tmp_path / "board", body, mode)
