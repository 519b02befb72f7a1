"""Shared fixtures: one EPMD per test session and real local Erlang nodes (127.0.0.1 only).

``tests/py`` is on ``sys.path`` (pytest's rootdir-conftest rule), so suites import helpers as
``from support.erlnode import ErlNode``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.erlnode import DEFAULT_COOKIE, Epmd, ErlNode


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
