"""Checks of a user's own release on an emulated board, before flashing it.

Run them with the ``relsync`` pytest plugin's options (see :mod:`relsync.harness.pytest_plugin`)::

    pytest -m e2e --pyargs relsync.harness.checks \\
        --relsync-release=_build/prod/rel/myapp --relsync-target=qemu-arm

or ``relsync validate _build/prod/rel/myapp --target qemu-arm``. In order: the board boots the
release read-only with its main application started; syncing the same release changes nothing;
a copy with one tiny module added syncs and the module loads and answers, and syncing the
original again removes it; after a reboot the board runs the untouched release and a sync still
works. Nothing here depends on what the release contains beyond a main application; the added
module is compiled with this machine's ``erlc`` (as relsync compiles ``-H`` hooks files).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from relsync.erldist.etf import Atom
from relsync.harness.client import Run
from relsync.harness.kinds import EmulatedBoard
from relsync.harness.local import copy_project_links, read_release_info
from relsync.harness.ready import app_names

pytestmark = pytest.mark.e2e

Sync = Callable[..., Run]
Report = Callable[[str], None]


def _ok(run: Run, what: str) -> None:
    assert run.code == 0, f"{what}: relsync exited {run.code}: {run.err.strip()}"


def _with_probe(release: Path, workdir: Path) -> tuple[Path, str, str, str]:
    """A copy of ``release`` with a tiny new module in its main app's ebin:
    (copy, module name, its beam relative to the release, the token it answers)."""
    info = read_release_info(release)
    main = info.main_app
    versions = {app.name: app.version for app in info.apps}
    ebin = Path("lib") / f"{main}-{versions.get(main, '')}" / "ebin"
    if not (release / ebin).is_dir():
        found = sorted(release.glob(f"lib/{main}-*/ebin"))
        assert found, f"{release}: no lib/{main}-*/ebin for the main application {main}"
        ebin = found[-1].relative_to(release)
    module, token = f"relsync_probe_{secrets.token_hex(4)}", secrets.token_hex(8)
    copy = workdir / f"{info.name}-probe"
    shutil.copytree(release, copy, symlinks=True)
    copy_project_links(copy, release)
    (copy / ebin).chmod(0o755)
    source = workdir / f"{module}.erl"
    source.write_text(f'-module({module}).\n-export([token/0]).\ntoken() -> <<"{token}">>.\n')
    erlc = shutil.which("erlc")
    assert erlc, "erlc not found: Erlang/OTP must be installed on this machine"
    subprocess.run([erlc, "-o", str(copy / ebin), str(source)], check=True, capture_output=True)
    return copy, module, f"{ebin.as_posix()}/{module}.beam", token


@pytest.fixture(scope="module")
def pristine(relsync_board: EmulatedBoard) -> dict[str, str]:
    """The board's release as it booted (files and links, with their hashes)."""
    return asyncio.run(relsync_board.tree(str(relsync_board.release_path)))


@pytest.fixture(scope="module")
def probe(
    relsync_release: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, str, str]:
    """A copy of the release with one tiny module added (see ``_with_probe``)."""
    return _with_probe(relsync_release, tmp_path_factory.mktemp("relsync-probe"))


def test_board_runs_the_release(
    relsync_board: EmulatedBoard,
    relsync_release: Path,
    pristine: dict[str, str],
    relsync_report: Report,
) -> None:
    info = read_release_info(relsync_release)
    apps = app_names(asyncio.run(relsync_board.rpc("application", "which_applications")))
    assert relsync_board.main_app in apps, f"{relsync_board.main_app} not started: {apps}"
    assert pristine, f"nothing at {relsync_board.release_path} on the board"
    relsync_report(
        f"{relsync_board.kind} board {relsync_board.id} (OTP {relsync_board.otp}) runs "
        f"{info.name} {info.version} read-only at {relsync_board.release_path}: "
        f"{len(pristine)} files, {len(apps)} applications started, main {relsync_board.main_app}"
    )


def test_same_release_syncs_as_a_no_op(
    relsync_board: EmulatedBoard, relsync_release: Path, relsync_sync: Sync, relsync_report: Report
) -> None:
    run = relsync_sync(relsync_release)
    _ok(run, "syncing the release the board runs")
    assert run.report["written"] == [] and run.report["reload"] == [], run.report
    shadow = asyncio.run(relsync_board.tree(str(relsync_board.rw_path)))
    real = [rel for rel, entry in shadow.items() if not entry.startswith("link:")]
    assert real == [], f"files copied although nothing changed: {real}"
    relsync_report(f"same release: nothing written, nothing reloaded ({len(shadow)} links)")


def test_added_module_syncs_loads_and_goes(
    relsync_board: EmulatedBoard,
    relsync_release: Path,
    probe: tuple[Path, str, str, str],
    relsync_sync: Sync,
    relsync_report: Report,
) -> None:
    copy, module, beam, token = probe
    run = relsync_sync(copy)
    _ok(run, f"syncing a copy with {module} added")
    assert run.report["added"] == [beam], run.report
    statuses = {m["module"]: m["status"] for m in run.report["modules"]}
    assert statuses == {module: "loaded"}, run.report
    assert asyncio.run(relsync_board.rpc(module, "token")) == token.encode()
    seconds = run.report["seconds"]
    back = relsync_sync(relsync_release)
    _ok(back, "syncing the original release again")
    assert back.report["deleted"] == [beam], back.report
    loaded = asyncio.run(relsync_board.rpc("code", "is_loaded", [Atom(module)]))
    assert loaded == "false", f"{module} still loaded after it was deleted"
    relsync_report(f"added module {module}: synced, loaded, answered ({seconds} s), then removed")


def test_reboot_comes_back_pristine(
    relsync_board: EmulatedBoard,
    relsync_release: Path,
    probe: tuple[Path, str, str, str],
    pristine: dict[str, str],
    relsync_sync: Sync,
    relsync_report: Report,
) -> None:
    copy, module, _beam, token = probe
    _ok(relsync_sync(copy), f"syncing a copy with {module} added")
    asyncio.run(relsync_board.reboot())
    apps = app_names(asyncio.run(relsync_board.rpc("application", "which_applications")))
    assert relsync_board.main_app in apps
    loaded = asyncio.run(relsync_board.rpc("code", "is_loaded", [Atom(module)]))
    assert loaded == "false", f"{module} survived the reboot"
    now = asyncio.run(relsync_board.tree(str(relsync_board.release_path)))
    assert now == pristine, "the read-only release changed"
    again = relsync_sync(copy)
    _ok(again, "syncing after the reboot")
    assert asyncio.run(relsync_board.rpc(module, "token")) == token.encode()
    _ok(relsync_sync(relsync_release), "syncing the original release")
    relsync_report("reboot: back on the untouched release; the next sync reconciled and loaded")
