"""pytest fixtures for emulated boards (registered as the ``relsync`` pytest plugin).

Check your own release on an emulated board before flashing it::

    pytest -m e2e --pyargs relsync.harness.checks \\
        --relsync-release=_build/prod/rel/myapp --relsync-target=qemu-arm

(``relsync validate RELEASE --target qemu-arm`` runs the same.) Options:

``--relsync-release=PATH``
    the built release, relx or mix, started as it is (its own node name and cookie; for
    qemu-arm its port programs built for armhf and the release for OTP 25)
``--relsync-target=local|docker-otp|qemu-arm``
    the board kind (default ``local``: this machine's OTP, the release on a read-only bind mount)
``--relsync-otp=25|27``
    docker-otp only; default: the OTP the release was built with
``--relsync-mode=erl|ssh``
    how relsync reaches the board (default ``erl``; ``ssh`` starts relsyncd beside the release)
``--relsync-env=NAME=VALUE``
    a variable the release's vm.args / sys.config use (``${NAME}``); repeatable

Fixtures:

``relsync_release``
    the release's path (``--relsync-release``), a :class:`~pathlib.Path`
``relsync_board``
    session-scoped: a board of ``--relsync-target`` running that release read-only, booted once
    (see :class:`relsync.harness.kinds.EmulatedBoard`: ``rpc``, ``exec``, ``tree``, ``reboot``,
    ``power_cut``, ``release_path``, ``rw_path``, ``console_log``)
``relsync_sync``
    ``relsync_sync(local_release, *args)`` runs the relsync command line against
    ``relsync_board`` into its shadow tree (``-q rw_path --json``) and returns a
    :class:`~relsync.harness.client.Run` (``code``; ``json``, the whole ``--json`` object;
    ``report``, its one board; ``out``, ``err``)
``relsync_report``
    ``relsync_report("line")`` adds a line to the report printed at the end of the session
``docker_board``
    ``docker_board(release, otp=27, ssh=True)`` starts a docker-otp board, removed after the test

A failing test that uses a board (any fixture value with a ``console_log``, or with a ``board``
that has one) gets the end of the board's console and the last sync's report as extra sections
of its failure report. Board methods open a fresh connection per call, so a test may use them
from any event loop: ``asyncio.run(board.rpc("erlang", "node", []))``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from relsync.errors import UsageError
from relsync.harness.client import Run, run_relsync
from relsync.harness.docker import DockerBoard
from relsync.harness.kinds import BOARD_OPTIONS, EmulatedBoard, parse_env, start_board
from relsync.harness.ready import BoardError

#: Lines of a board's console attached to a failure.
CONSOLE_LINES = 80


@dataclass
class _State:
    """What the plugin remembers over a session."""

    last_run: Run | None = None
    report: list[str] = field(default_factory=list)


_STATE = pytest.StashKey[_State]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("relsync", "relsync: check a release on an emulated board")
    group.addoption("--relsync-release", metavar="PATH", help="the built release to check")
    for name, kwargs in BOARD_OPTIONS.items():
        group.addoption(f"--relsync-{name}", **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_STATE] = _State()
    config.addinivalue_line("markers", "e2e: runs against emulated targets")


@pytest.fixture(scope="session")
def relsync_release(pytestconfig: pytest.Config) -> Path:
    """The release given with ``--relsync-release``."""
    value = pytestconfig.getoption("relsync_release")
    if not value:
        pytest.fail("no release to check: pass --relsync-release=PATH", pytrace=False)
    path = Path(str(value)).resolve()
    if not (path / "releases").is_dir():
        pytest.fail(f"--relsync-release={value}: not a release (no releases/)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def relsync_board(
    pytestconfig: pytest.Config, relsync_release: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmulatedBoard]:
    """A board of ``--relsync-target`` running ``relsync_release`` read-only (one per session)."""
    target = str(pytestconfig.getoption("relsync_target"))
    mode = str(pytestconfig.getoption("relsync_mode"))
    otp = pytestconfig.getoption("relsync_otp")
    workdir = tmp_path_factory.mktemp("relsync-board")
    try:
        starting = start_board(
            target, relsync_release, workdir=workdir, ssh=mode == "ssh",
            otp=int(otp) if otp else None, env=parse_env(pytestconfig.getoption("relsync_env")),
        )  # fmt: skip
        board = asyncio.run(starting)
    except (BoardError, UsageError) as exc:
        pytest.fail(f"the {target} board did not come up with {relsync_release}: {exc}",
                    pytrace=False)  # fmt: skip
    try:
        yield board
    finally:
        asyncio.run(board.stop())


@pytest.fixture
def relsync_sync(pytestconfig: pytest.Config, relsync_board: EmulatedBoard) -> Callable[..., Run]:
    """``relsync_sync(local, *args)``: sync ``local`` to ``relsync_board``'s shadow tree."""
    mode = str(pytestconfig.getoption("relsync_mode"))
    state = pytestconfig.stash[_STATE]

    def sync(local: Path, *args: str) -> Run:
        rw = str(relsync_board.rw_path)
        run = asyncio.run(run_relsync(relsync_board, local, "-q", rw, "--json", *args, mode=mode))
        state.last_run = run
        return run

    return sync


@pytest.fixture(scope="session")
def relsync_report(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """``relsync_report(line)``: a line for the report printed at the end of the session."""
    return pytestconfig.stash[_STATE].report.append


@pytest.fixture
def docker_board(tmp_path: Path) -> Iterator[Callable[..., DockerBoard]]:
    """A factory of docker-otp boards, all removed when the test ends."""
    boards: list[DockerBoard] = []

    def start(release: Path, otp: int = 27, ssh: bool = True) -> DockerBoard:
        board = asyncio.run(
            DockerBoard.start(release, otp=otp, workdir=tmp_path / "boards", ssh=ssh)
        )
        boards.append(board)
        return board

    yield start
    for board in boards:
        asyncio.run(board.stop())


def _console_logs(item: pytest.Item) -> list[tuple[str, Path]]:
    found: dict[Path, str] = {}
    for value in getattr(item, "funcargs", {}).values():
        for candidate in (value, getattr(value, "board", None)):
            log = getattr(candidate, "console_log", None)
            if isinstance(log, Path):
                found.setdefault(log, str(getattr(candidate, "id", log.parent.name)))
    return [(name, log) for log, name in found.items()]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.failed or report.when == "teardown":
        return
    for name, log in _console_logs(item):
        try:
            lines = log.read_text(errors="replace").splitlines()[-CONSOLE_LINES:]
        except OSError as exc:
            lines = [f"(cannot read {log}: {exc})"]
        report.sections.append((f"board {name} console (end of {log})", "\n".join(lines)))
    last = item.config.stash[_STATE].last_run
    if last is not None and "relsync_sync" in getattr(item, "fixturenames", ()):
        text = json.dumps(last.report, indent=2) if last.report else last.out
        report.sections.append(
            (f"last relsync run (exit {last.code})", f"{text}\nstderr: {last.err.strip()}")
        )


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash[_STATE].report
    if lines:
        terminalreporter.write_sep("=", "relsync report")
        for line in lines:
            terminalreporter.write_line(line)
