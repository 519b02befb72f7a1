"""The ``local`` board kind against the example release (examples/demo), built on demand."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from relsync.harness.local import LocalBoard, mount_points, read_release_info
from relsync.harness.ready import BoardError
from relsync.rel_file import parse_rel_file

T = TypeVar("T")


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await coro_fn()

    return asyncio.run(main())


def tree_digest(root: Path) -> dict[str, tuple[int, str]]:
    """Every file and directory under root: relative path -> (mode, content hash)."""
    out: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            digest = ""
            if path.is_file() and not path.is_symlink():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path.relative_to(root))] = (st.st_mode, digest)
    return out


def processes_mentioning(text: str) -> list[str]:
    """Command lines (or executables) of live processes that mention text."""
    found: list[str] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
            exe = ""
            with contextlib.suppress(OSError):
                exe = os.readlink(f"/proc/{entry}/exe")
        except OSError:
            continue
        if text in cmdline or text in exe:
            found.append(f"{entry}: {cmdline or exe}")
    return found


def assert_write_fails(release_path: Path) -> None:
    with pytest.raises(OSError):
        (release_path / "relsync-write-probe").write_text("x")
    with pytest.raises(OSError), open(release_path / "releases" / "start_erl.data", "a") as fh:
        fh.write("x")
    assert not (release_path / "relsync-write-probe").exists()


async def port_open(port: int) -> bool:
    try:
        _r, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


# --------------------------------------------------------------------------------------------


def test_release_info_of_demo(demo_release: Path) -> None:
    info = read_release_info(demo_release)
    assert (info.name, info.version, info.main_app) == ("demo", "0.1.0", "demo")
    assert info.start_script == demo_release / "bin" / "demo"
    assert {"kernel", "stdlib", "demo"} <= {app.name for app in info.apps}


def test_main_app_when_release_is_named_differently() -> None:
    text = """%% comment
    {release,{"fw","2.0"},{erts,"13.1.5"},
      [{kernel,"8.5.3"},{stdlib,"4.2"},{core,"1.0"},{'my_web',"0.3",[core]},
       {tools_x,"1.1",load},{sasl,"4.2"}]}.
    """
    name, vsn, erts, apps = parse_rel_file(text)
    assert (name, vsn, erts) == ("fw", "2.0", "13.1.5")
    assert [(a.name, a.start_type) for a in apps] == [
        ("kernel", "permanent"),
        ("stdlib", "permanent"),
        ("core", "permanent"),
        ("my_web", "permanent"),
        ("tools_x", "load"),
        ("sasl", "permanent"),
    ]


@pytest.mark.integration
def test_board_runs_demo_from_read_only_path(demo_release: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with await LocalBoard.start(demo_release, workdir=tmp_path / "board") as board:
            assert board.release_path.is_relative_to(tmp_path)
            assert board.node.endswith("@127.0.0.1")
            assert_write_fails(board.release_path)
            if os.geteuid() == 0:
                assert board.read_only_mode == "bind-mount"
                assert board.release_path in mount_points()
            # The rw path is writable.
            (board.rw_path / "probe").write_text("ok")

            apps = await board.rpc("application", "which_applications", [])
            assert isinstance(apps, list)
            assert "demo" in {str(a[0]) for a in apps if isinstance(a, tuple)}
            root = await board.rpc("code", "root_dir", [])
            assert str(root) == str(board.release_path)

            assert await board.rpc("demo_counter", "value", []) == 0
            assert await board.rpc("demo_counter", "bump", []) == 1
            assert await board.rpc("demo_counter", "bump", []) == 2
            assert await board.rpc("demo_counter", "value", []) == 2
            assert await board.rpc("demo_counter", "version", []) == 1
            assert await board.rpc("demo_port", "ask", [b"hello"]) == b"v1:hello"
            assert board.console_log.is_file()
        assert board.pid is None

    run(scenario)


@pytest.mark.integration
def test_reboot_resets_state_and_keeps_release_and_rw(demo_release: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with await LocalBoard.start(demo_release, workdir=tmp_path / "board") as board:
            before = tree_digest(board.release_path)
            for _ in range(3):
                await board.rpc("demo_counter", "bump", [])
            assert await board.rpc("demo_counter", "value", []) == 3
            (board.rw_path / "kept").write_text("still here")
            old_pid = board.pid
            assert old_pid is not None

            await board.reboot()

            assert board.pid is not None and board.pid != old_pid
            assert not Path(f"/proc/{old_pid}").exists()
            assert await board.rpc("demo_counter", "value", []) == 0
            assert await board.rpc("demo_port", "ask", [b"again"]) == b"v1:again"
            assert (board.rw_path / "kept").read_text() == "still here"
            assert tree_digest(board.release_path) == before
            assert_write_fails(board.release_path)
            assert "reboot" in board.console_log.read_text()

    run(scenario)


@pytest.mark.integration
def test_stop_is_clean_and_idempotent(demo_release: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "board"

    async def scenario() -> None:
        board = await LocalBoard.start(demo_release, workdir=workdir)
        try:
            assert board.pid is not None
            # The node and its port program run from the workdir.
            running = processes_mentioning(str(workdir))
            assert any("demo_port" in p for p in running), running
            assert await port_open(board.epmd_port)
        finally:
            await board.stop()
        assert processes_mentioning(str(workdir)) == []
        assert board.release_path not in mount_points()
        assert not await port_open(board.epmd_port)  # the epmd this board started is gone
        await board.stop()  # idempotent
        with pytest.raises(BoardError):
            await board.reboot()

    run(scenario)


@pytest.mark.integration
def test_node_that_dies_at_boot_fails_start_with_log_tail(
    demo_release: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(demo_release, broken, symlinks=True)
    (broken / "releases" / "0.1.0" / "sys.config").write_text("[{kernel, [}.\n")
    workdir = tmp_path / "board"

    async def scenario() -> None:
        with pytest.raises(BoardError) as err:
            await LocalBoard.start(broken, workdir=workdir)
        message = str(err.value)
        assert "exited" in message
        assert "sys.config" in message  # quoted from the console log
        assert processes_mentioning(str(workdir)) == []
        assert workdir / "ro" / "srv" / "erlang" not in mount_points()

    run(scenario)
