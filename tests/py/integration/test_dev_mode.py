"""rebar3's default (dev-mode) release, run from ``_build`` and synced by ``relsync --build``
in the project, as the README's first-run flow has it.

The release links its application back into the project (``lib/myapp-0.1.0`` ->
``_build/default/lib/myapp``, whose ``src`` links to ``apps/myapp/src``) and its
``releases/0.1.0/sys.config``/``vm.args`` to ``config/``. The node runs that very directory, so
a sync has nothing to copy: it reloads what the build changed, writes nothing (the project's
sources keep their inodes, the links stay links), and a second sync does nothing at all.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from support.dev_release import (
    REFUSE,
    TAG,
    DevNode,
    counter_source,
    dev_links,
    dev_project,
    project_files,
    run_in_project,
)

from relsync.erldist.etf import Atom

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("mode", ["erl", "ssh"])
def test_a_dev_mode_release_run_from_build(tmp_path: Path, mode: str) -> None:
    project = dev_project(tmp_path)
    release = project / "_build" / "default" / "rel" / "myapp"
    counter = project / "apps" / "myapp" / "src" / "myapp_counter.erl"
    links = dev_links(release)

    async def body() -> None:
        async with DevNode(release, tmp_path / "home").running() as node:
            if mode == "ssh":
                await node.enable_ssh()
            for _ in range(3):
                await node.rpc("myapp_counter", "bump", [])
            counter.write_text(counter_source(2))
            before = project_files(project)

            code, report, err = await run_in_project(project, node, "--build")
            assert code == 0, err
            assert report["reload"] == ["myapp_counter"], report
            assert report["written"] == [] and report["added"] == [] and report["changed"] == []
            assert await node.rpc("myapp_counter", "version", []) == 2
            assert await node.rpc("sys", "get_state", [Atom("myapp_counter")]) == (Atom("count"), 3)
            assert project_files(project) == before
            assert dev_links(release) == links

            code, report, err = await run_in_project(project, node)
            assert code == 0, err
            assert report["reload"] == [] and report["written"] == [], report
            assert report["modules"] == []

            counter.write_text(counter_source(3, TAG))
            before = project_files(project)
            code, report, err = await run_in_project(project, node, "--build", "--upgrade")
            assert code == 0, (err, report)
            assert report["reload"] == ["myapp_counter"], report
            assert await node.rpc("myapp_counter", "version", []) == 3
            assert await node.rpc("sys", "get_state", [Atom("myapp_counter")]) == (
                Atom("count"),
                3,
                Atom("upgraded"),
            )
            assert any("cannot be undone" in w for w in report["warnings"]), report
            assert project_files(project) == before
            assert dev_links(release) == links

            # The old code is gone: a step that fails cannot be undone, and says so.
            counter.write_text(counter_source(4, REFUSE))
            code, report, err = await run_in_project(project, node, "--build", "--upgrade")
            assert code == 9, (err, report)
            line = err.splitlines()[-1]  # after the build's output
            assert "relsync: error: upgrade failed: process" in line, err
            assert "could not be undone for myapp_counter: the build replaced" in line
            assert await node.rpc("myapp_counter", "version", []) == 4  # kept, as it says
            assert dev_links(release) == links

    asyncio.run(body())


def test_a_copy_of_a_dev_mode_release_gets_real_files_and_the_project_is_left_alone(
    tmp_path: Path,
) -> None:
    """The board runs a copy (``cp -a``: its links still lead into the project): the sync
    replaces the links by what they lead to, in the copy, and writes nothing through them."""
    project = dev_project(tmp_path)
    built = project / "_build" / "default" / "rel" / "myapp"
    copy = tmp_path / "board" / "myapp"
    copy.parent.mkdir()
    subprocess.run(["cp", "-a", str(built), str(copy)], check=True)
    counter = project / "apps" / "myapp" / "src" / "myapp_counter.erl"
    links = dev_links(built)

    async def body() -> None:
        async with DevNode(copy, tmp_path / "home").running() as node:
            await node.rpc("myapp_counter", "bump", [])
            counter.write_text(counter_source(2))
            before = project_files(project)
            code, report, err = await run_in_project(project, node, "--build")
            assert code == 0, err
            assert report["root"] == str(copy) and "myapp_counter" in report["reload"]
            assert await node.rpc("myapp_counter", "version", []) == 2
            assert await node.rpc("sys", "get_state", [Atom("myapp_counter")]) == (Atom("count"), 1)
            assert project_files(project) == before and dev_links(built) == links
            app = copy / "lib" / "myapp-0.1.0"
            assert app.is_dir() and not app.is_symlink()
            assert (app / "src" / "myapp_counter.erl").read_text() == counter_source(2)
            config = copy / "releases" / "0.1.0" / "sys.config"
            assert config.is_file() and not config.is_symlink()
            code, report, err = await run_in_project(project, node)
            assert code == 0, err
            assert report["written"] == report["reload"] == [], report

    asyncio.run(body())


def test_a_shadow_tree_is_not_used_for_the_release_the_node_runs_from_build(
    tmp_path: Path,
) -> None:
    """``-q`` (say ``destination_rw_path`` in rebar.config, meant for the real board) with the
    node running ``_build`` itself: nothing to mirror, so no shadow tree is made and the VM
    stays on its release; a rollback then has nothing to do and the application keeps its
    code path (the shadow tree copied the build's files, and the rollback took ``myapp`` off
    the code path and unloaded its modules)."""
    project = dev_project(tmp_path)
    release = project / "_build" / "default" / "rel" / "myapp"
    counter = project / "apps" / "myapp" / "src" / "myapp_counter.erl"
    rw = tmp_path / "rw"

    async def body() -> None:
        async with DevNode(release, tmp_path / "home").running() as node:
            await node.rpc("myapp_counter", "bump", [])
            counter.write_text(counter_source(2))
            code, report, err = await run_in_project(project, node, "--build", "-q", str(rw))
            assert code == 0, err
            assert report["written"] == [] and report["reload"] == ["myapp_counter"], report
            assert any("is not used" in w for w in report["warnings"]), report
            assert not rw.exists()
            code, report, err = await run_in_project(project, node, "-q", str(rw), "--rollback")
            assert code == 0, err
            assert await node.rpc("myapp_counter", "version", []) == 2
            path = await node.rpc("code", "priv_dir", [Atom("myapp")])
            assert isinstance(path, str) and "myapp" in path, path
            loaded = await node.rpc("code", "is_loaded", [Atom("myapp_sup")])
            assert isinstance(loaded, tuple)

    asyncio.run(body())
