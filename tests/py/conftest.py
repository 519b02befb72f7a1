"""Shared fixtures: one EPMD per test session and real local Erlang nodes (127.0.0.1 only).

``tests/py`` is on ``sys.path`` (pytest's rootdir-conftest rule), so suites import helpers as
``from support.erlnode import ErlNode``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.erlnode import DEFAULT_COOKIE, Epmd, ErlNode
from support.otp_rootfs import Rootfs, RootfsUnavailable, ensure_rootfs, running_node


@pytest.fixture(scope="session")
def epmd_port() -> Iterator[int]:
    """A free port with our own epmd listening on it; killed at the end of the session."""
    epmd = Epmd.start()
    try:
        yield epmd.port
    finally:
        epmd.stop()


@pytest.fixture(scope="session")
def cookie() -> str:
    """The cookie every test node is started with."""
    return DEFAULT_COOKIE


@pytest.fixture(scope="session")
def erl_node(epmd_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ErlNode]:
    """A shared running node with a long name ``x@127.0.0.1`` (default net_ticktime 60 s).

    Shared by the whole session: do not kill it or change its global state; use
    ``make_erl_node`` for that.
    """
    node = ErlNode.start(
        epmd_port=epmd_port, name="shared_long", workdir=tmp_path_factory.mktemp("shared_long")
    )
    yield node
    node.stop()


@pytest.fixture(scope="session")
def erl_short_node(epmd_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ErlNode]:
    """A shared running node with a short name (``-sname x``, host = this machine's name)."""
    node = ErlNode.start(
        epmd_port=epmd_port,
        name="shared_short",
        short=True,
        workdir=tmp_path_factory.mktemp("shared_short"),
    )
    yield node
    node.stop()


@pytest.fixture
def make_erl_node(epmd_port: int, tmp_path: Path) -> Iterator[Callable[..., ErlNode]]:
    """A factory for private nodes (to kill, reconfigure, ...); all stopped after the test.

    Takes :meth:`ErlNode.start`'s keyword arguments (``epmd_port`` is filled in).
    """
    started: list[ErlNode] = []

    def make(**kwargs: object) -> ErlNode:
        kwargs.setdefault("workdir", tmp_path / f"node{len(started)}")
        node = ErlNode.start(epmd_port=epmd_port, **kwargs)  # type: ignore[arg-type]
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()


@pytest.fixture(scope="session")
def otp27_rootfs() -> Rootfs:
    """The cached Debian trixie tree with OTP 27 (built on first use: root, ~30 s, ~160 MiB).

    Never skipped: as root (CI) mmdebstrap is installed and the tree built here; otherwise a
    missing tree fails the test with the exact commands to build it.
    """
    try:
        return ensure_rootfs()
    except RootfsUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def otp27_node(
    otp27_rootfs: Rootfs, epmd_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ErlNode]:
    """A shared OTP 27 node ``shared_otp27@127.0.0.1`` running in ``otp27_rootfs`` (chroot).

    Registered with the session's EPMD, cookie ``cookie``. Shared like ``erl_node``: do not
    kill it. Paths it sees are in-tree ones: use ``otp27_rootfs.host_path``/``scratch_dir``.
    """
    with running_node(
        otp27_rootfs,
        epmd_port=epmd_port,
        name="shared_otp27",
        workdir=tmp_path_factory.mktemp("shared_otp27"),
    ) as node:
        yield node
