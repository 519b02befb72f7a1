"""``rebar3 relsync`` (integrations/rebar3_relsync) and ``mix relsync``
(integrations/mix_relsync) in projects made by the tests, onto local boards: each runs the
relsync command of this checkout (``$RELSYNC``) with ``--build``, the project's own options
(``{relsync, [...]}`` in rebar.config, ``relsync:`` in mix.exs) and the command line's; a
failing relsync fails the tool with one line naming the exit code.

The rebar3 plugin is fetched as a user would, with ``git_subdir`` from a git repository (one
the tests make from this checkout: offline); the mix task is a path dependency."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.cli import cli_argv
from support.local_board import with_board
from support.mix_project import mix_env, mix_release

from relsync.erldist.etf import Atom
from relsync.harness.example import APP_DIR, copy_example_project
from relsync.harness.local import LocalBoard
from relsync.harness.watching import WatchRun, save

pytestmark = pytest.mark.integration

INTEGRATIONS = Path(__file__).resolve().parents[3] / "integrations"
#: The relsync command of the environment running the tests (this checkout's venv).
RELSYNC = Path(sys.executable).parent / "relsync"
#: Limit for one run of rebar3 or mix (a build and a sync: seconds).
RUN_LIMIT = 300.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")
NOT_FOUND = "relsync: command not found: pip install relsync, or set RELSYNC=/path/to/relsync"


class ToolRun:
    """One run of ``rebar3 relsync`` or ``mix relsync``: exit code, stdout, stderr."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def report(self) -> dict[str, Any]:
        """relsync's ``--json`` report: its line among the tool's own on stdout (rebar3 ends
        each of its lines with a colour reset that lands at the start of the next)."""
        lines = [line for line in ANSI.sub("", self.out).splitlines() if line.startswith("{")]
        assert lines, self
        whole: dict[str, Any] = json.loads(lines[-1])
        boards = whole.get("boards", [])  # one board's report, as support.cli's Run gives it
        report: dict[str, Any] = boards[0] if len(boards) == 1 else whole
        return report

    def last_line(self, stream: str) -> str:
        """The last line the tool wrote on ``stream`` (``out`` or ``err``)."""
        lines = ANSI.sub("", getattr(self, stream)).strip().splitlines()
        return lines[-1] if lines else ""

    def __repr__(self) -> str:
        return f"ToolRun(code={self.code}, out={self.out[-2000:]!r}, err={self.err[-2000:]!r})"


async def run_tool(argv: list[str], cwd: Path, env: dict[str, str]) -> ToolRun:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_LIMIT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return ToolRun(proc.returncode, out.decode(), err.decode())


def board_options(board: LocalBoard, mode: str, *drop: str) -> list[str]:
    """relsync's options reaching ``board`` (as support.cli gives them), without ``-l`` (the
    tool builds the release) and the options named in ``drop`` (set in the project instead)."""
    argv = cli_argv(board, Path("."), mode=mode)[3:]  # after python -m relsync.cli
    for option in ("-l", *drop):
        at = argv.index(option)
        argv = argv[:at] + argv[at + 2 :]
    return argv


def tool_env(home: Path, relsync: Path | str = RELSYNC) -> dict[str, str]:
    """Offline, writing nowhere but ``home`` (for mix), with ``$RELSYNC`` set."""
    return {**mix_env(home), "RELSYNC": str(relsync)}


def edit(path: Path, old: str, new: str) -> None:
    """Replace ``old`` by ``new``, the file dated ahead: rebar3 and mix compare mtimes in whole
    seconds, and an edit in the second of the last build, size unchanged, looks like none."""
    text = path.read_text()
    assert old in text, (old, path)
    path.write_text(text.replace(old, new, 1))
    later = time.time() + 5
    os.utime(path, (later, later))


async def runs_from_shadow_tree(board: LocalBoard, module: str, beam: Path) -> None:
    """``module`` was loaded from the board's shadow tree, where its beam is a real file."""
    which = await board.rpc("code", "which", [Atom(module)])
    assert isinstance(which, str) and which.startswith(str(board.rw_path)), which
    assert beam.is_file() and not beam.is_symlink(), beam


# --- rebar3 --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plugin_repo(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A git repository holding the plugin where the relsync repository has it, as a file://
    URL (rebar3 fetches it with git_subdir, as a user's project does from the real one)."""
    repo = tmp_path_factory.mktemp("relsync-git")
    shutil.copytree(
        INTEGRATIONS / "rebar3_relsync",
        repo / "integrations" / "rebar3_relsync",
        ignore=shutil.ignore_patterns("_build", "rebar.lock"),
    )
    git = ["git", "-c", "user.name=relsync tests", "-c", "user.email=tests@example.invalid"]
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "plugin"]):
        subprocess.run([*git, *command], cwd=repo, check=True, capture_output=True)
    return repo.as_uri()


def rebar3_project(where: Path, repo: str, *relsync_options: str) -> Path:
    """A copy of the example project with the plugin in project_plugins and
    ``{relsync, [relsync_options...]}`` in rebar.config."""
    project = copy_example_project(where)
    source = f'{{git_subdir, "{repo}", {{branch, "main"}}, "integrations/rebar3_relsync"}}'
    with (project / "rebar.config").open("a") as config:
        config.write(f"\n{{project_plugins, [{{rebar3_relsync, {source}}}]}}.\n")
        config.write(f"{{relsync, [{', '.join(relsync_options)}]}}.\n")
    return project


def test_rebar3_relsync_builds_and_syncs(
    demo_release: Path, plugin_repo: str, tmp_path: Path, mode: str
) -> None:
    async def body(board: LocalBoard) -> None:
        # The shadow tree from rebar.config, the rest on the command line.
        project = rebar3_project(
            tmp_path, plugin_repo, f'{{destination_rw_path, "{board.rw_path}"}}'
        )
        edit(project / "src" / "demo_counter.erl", "-define(VERSION, 1).", "-define(VERSION, 5).")
        env = tool_env(tmp_path)
        run = await run_tool(
            ["rebar3", "relsync", "-n", "demo", *board_options(board, mode), "--json"], project, env
        )
        assert run.code == 0, run
        assert "relsync: building: rebar3 release -n demo" in run.err, run  # as relsync printed
        assert "demo_counter" in run.report["reload"], run
        assert await board.rpc("demo_counter", "version") == 5
        beam = board.rw_path / APP_DIR / "ebin" / "demo_counter.beam"
        await runs_from_shadow_tree(board, "demo_counter", beam)

        # Long option names as the original plugin took them; relsync fails (a release path
        # the board does not have): rebar3 fails with one line naming relsync's exit code.
        long_form = board_options(board, mode, "-d", "-p")
        node = board.node if mode == "erl" else "127.0.0.1"
        bad = await run_tool(
            ["rebar3", "as", "prod", "relsync", "--relname", "demo", "--destination-node", node,
             "--destination-path", "/no/such/release", *long_form],
            project, env,
        )  # fmt: skip
        assert bad.code != 0, bad
        assert "relsync: building: rebar3 as prod release -n demo" in bad.err, bad
        assert "relsync: error:" in bad.err and "/no/such/release" in bad.err, bad
        assert "relsync failed with exit code 2" in bad.last_line("out"), bad  # rebar3's errors
        assert await board.rpc("demo_counter", "version") == 5

        # --watch through the plugin: a save is rebuilt and reloaded; a Ctrl-C ends rebar3, and
        # relsync (which runs in a session of its own) with it, as on a Ctrl-C of its own.
        argv = ["rebar3", "relsync", "-n", "demo", "--watch", *board_options(board, mode)]
        watch = WatchRun(argv, project, env)
        await watch.__aenter__()
        try:
            await watch.started()
            save(project / "src" / "demo_counter.erl", "(VERSION, 5)", "(VERSION, 6)")
            line = await watch.round()
            assert "reloaded demo_counter" in line, line
            assert await board.rpc("demo_counter", "version") == 6
        finally:
            await stop_watching(watch, project)
        assert "relsync: watch ended" in watch.stderr, watch.stderr
        assert "Traceback" not in watch.stderr, watch.stderr

        # -l: that release is synced as it is, nothing built (relsync refuses --build with -l).
        given = await run_tool(
            ["rebar3", "relsync", "-l", str(demo_release), *board_options(board, mode), "--json"],
            project, env,
        )  # fmt: skip
        assert given.code == 0, given
        assert "relsync: building" not in given.err, given
        assert await board.rpc("demo_counter", "version") == 1

    with_board(demo_release, tmp_path / "board", body, mode)


async def stop_watching(watch: WatchRun, project: Path) -> None:
    """Ctrl-C the tool running ``relsync --watch``; wait until relsync has ended too (it holds
    the tool's stderr). A relsync left running is killed (by its id), and that is a failure."""
    try:
        await asyncio.wait_for(watch.stop(), RUN_LIMIT)
    except TimeoutError:
        left = running_in(project)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"relsync kept running after rebar3 ended: pids {left}") from None


def running_in(directory: Path) -> list[int]:
    """The processes whose current directory is ``directory``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == directory:
                found.append(int(proc.name))
        except OSError:
            continue  # ended meanwhile, or not ours to look at
    return found


def test_rebar3_relsync_without_the_command(plugin_repo: str, tmp_path: Path) -> None:
    project = rebar3_project(tmp_path, plugin_repo)
    help_text = subprocess.run(
        ["rebar3", "help", "relsync"], cwd=project, env=tool_env(tmp_path),
        capture_output=True, text=True, timeout=RUN_LIMIT,
    )  # fmt: skip
    assert help_text.returncode == 0, help_text
    described = help_text.stdout + help_text.stderr
    assert "relsync --build" in described and "--destination-node" in described, described
    # No $RELSYNC, no relsync on the PATH (only what rebar3 itself needs).
    # A PATH of links to only these, wherever a relsync command may be installed.
    bin_dir = tmp_path / "only-rebar3"
    bin_dir.mkdir()
    for tool in ("rebar3", "escript", "erl", "git", "sh"):
        found = shutil.which(tool)
        assert found, f"{tool} is not installed"
        (bin_dir / tool).symlink_to(found)
    path = str(bin_dir)
    missing = subprocess.run(
        ["rebar3", "relsync", "-n", "demo"], cwd=project,
        env={**tool_env(tmp_path), "RELSYNC": "", "PATH": path},
        capture_output=True, text=True, timeout=RUN_LIMIT,
    )  # fmt: skip
    run = ToolRun(missing.returncode, missing.stdout, missing.stderr)
    assert run.code != 0 and run.last_line("out") == f"===> {NOT_FOUND}", run


# --- mix -----------------------------------------------------------------------------------


def add_relsync_mix(project: Path, options: str) -> None:
    """The task as a path dependency of ``project``, ``relsync: [options]`` in project/0."""
    mix_exs = project / "mix.exs"
    dep = f'{{:relsync_mix, path: "{INTEGRATIONS / "mix_relsync"}", runtime: false}}'
    text = mix_exs.read_text()
    text = text.replace("deps: deps()", f"deps: deps(),\n      relsync: [{options}]", 1)
    text = text.replace("defp deps do\n    [", f"defp deps do\n    [\n      {dep},", 1)
    assert dep in text and "relsync: [" in text, text
    mix_exs.write_text(text)


def test_mix_relsync_builds_and_syncs(tmp_path: Path, mode: str) -> None:
    project = tmp_path / "myex"
    v1 = shutil.copytree(mix_release(project, 1), tmp_path / "v1", symlinks=True)
    counter = "Elixir.Myex.Counter"

    async def body(board: LocalBoard) -> None:
        node = board.node if mode == "erl" else "127.0.0.1"
        # From mix.exs: the shadow tree, the node (a list: the option repeated), --json (true:
        # a bare flag); false and nil leave theirs out.
        add_relsync_mix(
            project,
            f'destination_rw_path: "{board.rw_path}", destination_node: ["{node}"], '
            "json: true, verbose: false, hooks: nil",
        )
        edit(project / "lib" / "myex" / "counter.ex", "do: {:reply, 1, n}", "do: {:reply, 5, n}")
        env = tool_env(tmp_path)
        run = await run_tool(["mix", "relsync", *board_options(board, mode, "-d")], project, env)
        assert run.code == 0, run
        assert "mix release --overwrite" in run.err, run  # relsync's build, MIX_ENV=prod
        assert counter in run.report["reload"], run
        assert await board.rpc(counter, "version") == 5
        beam = board.rw_path / "lib" / "myex-0.1.0" / "ebin" / f"{counter}.beam"
        await runs_from_shadow_tree(board, counter, beam)

        # The command line comes last: a bad value there fails relsync, and mix with one line.
        bad = await run_tool(
            ["mix", "relsync", *board_options(board, mode, "-d"), "--purge", "sometimes"],
            project, env,
        )  # fmt: skip
        assert bad.code != 0, bad
        assert "--purge" in bad.err, bad  # relsync's own message
        assert "relsync failed with exit code 2" in bad.last_line("err"), bad
        assert await board.rpc(counter, "version") == 5

        # -l: that release is synced as it is, nothing built (relsync refuses --build with -l).
        given = await run_tool(
            ["mix", "relsync", *board_options(board, mode, "-d"), "-l", str(v1)], project, env
        )
        assert given.code == 0, given
        assert "mix release" not in given.err, given
        assert await board.rpc(counter, "version") == 1

    with_board(v1, tmp_path / "board", body, mode)
