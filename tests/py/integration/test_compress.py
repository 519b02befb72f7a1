"""Files go compressed to a board when that pays (``$RELSYNC_COMPRESS`` forces the choice), and
the board inflates them within the size they declare: a small payload cannot make a big binary
(a zip bomb is refused before it grows past its declared size)."""

from __future__ import annotations

import hashlib
import shutil
import zlib
from pathlib import Path

import pytest
from support.cli import relsync
from support.local_board import with_board

from relsync.erldist.etf import Atom
from relsync.harness.example import APP_DIR
from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration

TEXT = f"{APP_DIR}/priv/notes.txt"


def _with_text(release: Path, root: Path, text: bytes) -> Path:
    shutil.copytree(release, root, symlinks=True)
    (root / TEXT).write_bytes(text)
    return root


def test_files_go_compressed_or_not_as_asked(
    demo_release: Path, tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(board: LocalBoard) -> None:
        # auto: under a MiB goes compressed without measuring the link; over a MiB the link is
        # measured (loopback: faster than zlib, most likely), either way the file arrives.
        for n, (choice, lines) in enumerate(
            (("always", 20000), ("never", 20000), ("auto", 20000), ("auto", 80000))
        ):
            monkeypatch.setenv("RELSYNC_COMPRESS", choice)
            text = b"".join(b"line %d of a compressible file\n" % i for i in range(n, lines))
            local = _with_text(demo_release, tmp_path / f"{choice}-{lines}", text)
            run = await relsync(board, local, "-q", str(board.rw_path), "--json", mode=mode)
            assert run.code == 0, run.err
            assert (board.rw_path / TEXT).read_bytes() == text
            sent, size = run.report["bytes_sent"], run.report["bytes_to_send"]
            if lines == 20000:
                assert sent < size / 3 if choice != "never" else sent >= size

    with_board(demo_release, tmp_path / "board", body, mode)


def test_board_inflates_only_what_a_file_declares(demo_release: Path, tmp_path: Path) -> None:
    data = b"relsync " * 4096
    sha = hashlib.sha256(data).digest()
    bomb = zlib.compress(bytes(64 << 20), 9)  # 64 MiB of zeros in about 64 KB

    async def body(board: LocalBoard) -> None:
        run = await relsync(board, demo_release, "-q", str(board.rw_path), mode="erl")
        assert run.code == 0, run.err  # the helper is loaded

        async def put(name: str, payload: object) -> object:
            path = str(board.rw_path / name).encode()
            return await board.rpc("relsync_target", "put_files", [[(path, 0o644, payload, sha)]])

        def zlib_of(size: int, packed: bytes) -> object:
            return (Atom("zlib"), size, packed)

        assert await put("good", zlib_of(len(data), zlib.compress(data))) == "ok"
        assert (board.rw_path / "good").read_bytes() == data
        path = str(board.rw_path / "bomb").encode()
        assert await put("bomb", zlib_of(len(data), bomb)) == ("error", path, "bad_compressed_data")
        too_big = zlib_of(64 << 20, bomb)  # declared over the limit: not inflated at all
        assert await put("bomb", too_big) == ("error", path, "badarg")
        short = zlib_of(len(data) + 1, zlib.compress(data))
        assert await put("bomb", short) == ("error", path, "bad_compressed_data")
        garbage = zlib_of(len(data), b"not zlib at all")
        assert await put("bomb", garbage) == ("error", path, "bad_compressed_data")
        assert not (board.rw_path / "bomb").exists()

    with_board(demo_release, tmp_path / "board", body)
