"""The node name and cookie a release gives itself, read where relx and mix keep them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from support.fake_release import make_release

from relsync.cli import main
from relsync.release_node import default_cookie, release_cookie, release_node

SHORT_HOST = socket.gethostname().split(".")[0]


def test_vm_args_of_a_stock_rebar3_release(tmp_path: Path) -> None:
    root = make_release(tmp_path / "demo")
    (root / "releases/0.1.0/vm.args").write_text(
        "## Name of the node\n-sname demo\n\n## Cookie for distributed erlang\n"
        "-setcookie demo_cookie\n+K true\n"
    )
    assert release_node(root) == f"demo@{SHORT_HOST}"
    assert release_cookie(root) == "demo_cookie"


def test_vm_args_src_values_left_to_the_environment(tmp_path: Path) -> None:
    root = make_release(tmp_path / "demo")
    (root / "releases/0.1.0/vm.args.src").write_text("-name demo@192.0.2.7\n-setcookie ${COOKIE}\n")
    assert release_node(root) == "demo@192.0.2.7"
    assert release_cookie(root) is None


def test_mix_release_cookie_file_and_env_sh(tmp_path: Path) -> None:
    root = make_release(tmp_path / "demo")
    (root / "releases/COOKIE").write_text("SECRETMIXCOOKIE")
    assert release_node(root) == f"demo@{SHORT_HOST}"  # named after the release, short names
    assert release_cookie(root) == "SECRETMIXCOOKIE"
    (root / "releases/0.1.0/env.sh").write_text(
        "#!/bin/sh\n# export RELEASE_NODE=other\nexport RELEASE_DISTRIBUTION=name\n"
        'export RELEASE_NODE="myex@198.51.100.4"\n'
    )
    assert release_node(root) == "myex@198.51.100.4"


def test_cookie_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_release(tmp_path / "demo")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RELSYNC_COOKIE", raising=False)
    assert default_cookie(root) == "cookie"  # the original's default, last
    (tmp_path / "home").mkdir()
    (tmp_path / "home/.erlang.cookie").write_text("HOMECOOKIE\n")
    assert default_cookie(root) == "HOMECOOKIE"
    (root / "releases/COOKIE").write_text("MIXCOOKIE")
    assert default_cookie(root) == "MIXCOOKIE"
    monkeypatch.setenv("RELSYNC_COOKIE", "ENVCOOKIE")
    assert default_cookie(root) == "ENVCOOKIE"


def test_no_target_named_anywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    root = make_release(tmp_path / "demo")  # its files name no node
    assert main(["-l", str(root)]) == 2
    err = capsys.readouterr().err
    assert (
        err == "relsync: error: no target: pass -d NODE (or -d HOST with -M ssh) or "
        "--targets FILE\n"
    )
