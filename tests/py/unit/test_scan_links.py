"""The local scan never fails open: symlinks inside the release stay symlinks, links into the
project are followed, links out, loops and anything unreadable stop the scan (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.fake_release import deep_tree, make_release

from relsync.errors import UsageError
from relsync.release import Skipped, project_of, scan_release

PRIV = "lib/demo-0.1.0/priv"


def _release(tmp_path: Path) -> Path:
    """A release built in a project: ``project/_build/prod/rel/demo``."""
    return make_release(tmp_path / "project/_build/prod/rel/demo")


def test_a_symlink_inside_the_release_stays_a_symlink(tmp_path: Path) -> None:
    root = _release(tmp_path)
    (root / PRIV / "data").mkdir()
    (root / PRIV / "data/a.txt").write_text("a")
    os.symlink("data", root / PRIV / "alias")
    os.symlink(root / "bin/demo", root / PRIV / "launcher")  # absolute, still inside
    release = scan_release(root)
    assert release.links == {f"{PRIV}/alias": "data", f"{PRIV}/launcher": "../../../bin/demo"}
    assert f"{PRIV}/data/a.txt" in release.files
    assert not any(rel.startswith(f"{PRIV}/alias/") for rel in release.files)


def test_a_symlink_into_the_project_is_followed(tmp_path: Path) -> None:
    root = _release(tmp_path)
    app = tmp_path / "project/apps/demo/priv"
    app.mkdir(parents=True)
    (app / "page.html").write_text("<p>")
    os.symlink(app, root / PRIV / "www")  # as rebar3's dev mode links an app's priv
    release = scan_release(root)
    assert release.files[f"{PRIV}/www/page.html"].path == str(root / PRIV / "www/page.html")
    assert release.links == {}
    assert project_of(root) == str(tmp_path / "project")


def test_a_dangling_symlink_is_skipped_and_reported(tmp_path: Path) -> None:
    root = _release(tmp_path)
    os.symlink("../../../../../apps/demo/include", root / PRIV / "include")
    release = scan_release(root)
    assert Skipped(f"{PRIV}/include", "dangling symlink (-> ../../../../../apps/demo/include)") in (
        release.skipped
    )
    assert f"{PRIV}/port" in release.files  # the rest is scanned


def test_a_symlink_out_of_the_release_is_refused_unless_asked(tmp_path: Path) -> None:
    root = _release(tmp_path)
    outside = tmp_path / "elsewhere.conf"
    outside.write_text("secret")
    os.symlink(outside, root / PRIV / "conf")
    with pytest.raises(UsageError) as caught:
        scan_release(root)
    message = str(caught.value)
    assert f"{PRIV}/conf is a symlink to {outside}, outside the release" in message
    assert "--copy-unsafe-links" in message and "\n" not in message
    copied = scan_release(root, copy_unsafe_links=True)
    assert copied.files[f"{PRIV}/conf"].size == len("secret")


@pytest.mark.parametrize("link", ["..", "."])
def test_a_directory_loop_is_refused(tmp_path: Path, link: str) -> None:
    root = _release(tmp_path)
    os.symlink(link, root / PRIV / "loop")
    with pytest.raises(UsageError, match=rf"{PRIV}/loop is a symlink loop \(-> {link}\)"):
        scan_release(root)


def test_a_link_to_itself_is_refused_as_a_loop(tmp_path: Path) -> None:
    root = _release(tmp_path)
    os.symlink("me", root / PRIV / "me")
    with pytest.raises(UsageError, match="symlink loop"):
        scan_release(root)


def test_a_directory_too_deep_to_open_stops_the_scan(tmp_path: Path) -> None:
    root = _release(tmp_path)
    deep_tree(root / PRIV)
    with pytest.raises(UsageError, match=r"cannot read .*\(File name too long\)"):
        scan_release(root)


def test_an_unreadable_file_stops_the_scan(tmp_path: Path) -> None:
    """Mode 000: refused even for root, whose read rights are dropped for the scan."""
    root = _release(tmp_path)
    secret = root / PRIV / "secret"
    secret.write_text("x")
    secret.chmod(0)
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    code = "from pathlib import Path; import sys; from relsync.release import scan_release\n"
    code += "scan_release(Path(sys.argv[1]))"
    argv = [*(drop if os.geteuid() == 0 else []), sys.executable, "-c", code, str(root)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert f"UsageError: cannot read {secret} (Permission denied)" in done.stderr
