"""The command line prints a file name that is not UTF-8 as its bytes, whatever the locale."""

from __future__ import annotations

import io
import sys

import pytest

from relsync.cli import main


def test_a_name_that_is_not_utf8_prints_as_its_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.BytesIO()
    strict = io.TextIOWrapper(out, encoding="utf-8", errors="strict")  # as under en_US.UTF-8
    monkeypatch.setattr(sys, "stdout", strict)
    assert main(["--version"]) == 0
    print("added: priv/caf\udce9.txt")
    sys.stdout.flush()
    assert out.getvalue().endswith(b"added: priv/caf\xe9.txt\n")
