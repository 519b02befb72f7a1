"""A board's error atoms reach the user as words, never as raw Erlang terms."""

from __future__ import annotations

import pytest

from relsync.erldist.etf import Atom, Term
from relsync.errors import TargetError
from relsync.transports.helper import HelperTarget, _module_result


class _Board(HelperTarget):
    label = "board@host"

    async def _call(self, function: str, args: list[Term], timeout: float = 0.0) -> Term:
        raise AssertionError("not called")

    async def _load_binary(self, module: str, beam: bytes) -> Term:
        raise AssertionError("not called")

    async def _ensure_upgrader(self) -> None:
        raise AssertionError("not called")


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("enotdir", "a part of the path is a file, not a directory"),
        ("enospc", "the disk is full; free space on it"),
        ("lock_lost", "no longer holds the board's sync lock; sync again"),
        ("ewhatever", "ewhatever; check the path"),  # unknown: as it came
    ],
)
def test_file_errors_in_words(reason: str, words: str) -> None:
    with pytest.raises(TargetError) as raised:
        _Board()._check((Atom("error"), b"/srv/erlang/lib/x", Atom(reason)), "writing files")
    message = str(raised.value)
    assert words in message and "/srv/erlang/lib/x" in message
    assert f" {reason};" not in message or reason == "ewhatever"


def test_a_module_that_cannot_load_says_why() -> None:
    result = _module_result("demo", (Atom("error"), Atom("badfile")))
    assert result.status == "error"
    assert result.detail == "not a beam this VM can load (built for a newer OTP, or damaged)"


def test_a_call_that_raised_on_the_board_is_one_line() -> None:
    stack = [(Atom("crypto"), Atom("hash"), 2, []), (Atom("relsync_target"), Atom("f"), 1, [])]
    with pytest.raises(TargetError) as raised:
        _Board()._check((Atom("error"), (Atom("error"), Atom("undef"), stack)), "writing files")
    message = str(raised.value)
    assert "\n" not in message and "crypto:hash/2 is not on the board" in message
    assert "relsync_target" not in message
