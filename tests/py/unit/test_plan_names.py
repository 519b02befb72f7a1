"""The plan and odd names and types: temporary-looking names the release has, temporary names
of long names, and paths whose type changes in place."""

from __future__ import annotations

import posixpath

from test_plan import DEST, RW, local, remote, sha

from relsync.plan import TargetState, build_plan, is_temp
from relsync.release import Skipped
from relsync.target import TEMP_PREFIX, RemoteFile, RemoteLink, temp_path

PRIV = "lib/demo-0.1.0/priv"
BASE = {"lib/demo-0.1.0/ebin/demo.app": "appfile", "releases/0.1.0/demo.rel": "rel"}


def test_a_temporary_name_fits_name_max_and_is_recognised() -> None:
    for name in ("a", "n" * 255, "caf\udce9.txt"):
        tmp = temp_path(f"/srv/erlang/{PRIV}/{name}", b"0123456789AB")
        assert posixpath.dirname(tmp) == f"/srv/erlang/{PRIV}"
        assert len(posixpath.basename(tmp).encode()) <= 64 and is_temp(tmp)
    assert temp_path("/d/x", None) != temp_path("/d/y", None) != temp_path("/d/y", b"T")
    # As a relsyncd from before these names stages a file (SFTP uploads must match it).
    assert temp_path("/d/x.beam", b"T", by_name=True) == "/d/.relsync-tmp.T.x.beam.part"
    assert temp_path("/d/x.beam", None, by_name=True) == "/d/.relsync-tmp.x.beam.part"


def test_a_release_file_named_like_a_temporary_is_no_leftover() -> None:
    files = {**BASE, f"{PRIV}/{TEMP_PREFIX}a.part": "a", f"releases/{TEMP_PREFIX}x": "x"}
    leftover = f"{PRIV}/{TEMP_PREFIX}0123456789AB.{'F' * 32}.part"
    board = {**remote(files), leftover: RemoteFile(leftover, 1, 0o644, sha("half"))}
    for state in (TargetState(DEST, None, board), TargetState(DEST, RW, remote(BASE), board, True)):
        plan = build_plan(local(files), state)
        assert plan.stale_temps == [leftover]
        root = state.rw or DEST
        assert plan.delete_paths == [f"{root}/{leftover}"]
        assert (plan.added, plan.changed, plan.deleted, plan.writes) == ([], [], [], [])


def test_in_place_what_stands_in_the_way_of_a_type_change_goes_first() -> None:
    release = local({**BASE, f"{PRIV}/d/f": "f", f"{PRIV}/x/f": "f", "releases/y": "y"})
    release.links[f"{PRIV}/gone"] = "nowhere"  # not on the board: only made
    release.skipped.append(Skipped(f"{PRIV}/dangling", "dangling symlink"))  # left alone
    board = {
        **remote({**BASE, f"{PRIV}/x": "was a file", "releases/y/old": "was a directory"}),
        f"{PRIV}/d": RemoteLink(f"{PRIV}/d", "elsewhere"),
        f"{PRIV}/stale": RemoteLink(f"{PRIV}/stale", "d"),
        f"{PRIV}/dangling": RemoteLink(f"{PRIV}/dangling", "../../../apps/demo/include"),
    }
    plan = build_plan(release, TargetState(DEST, None, board))
    assert plan.deleted == [f"{PRIV}/d", f"{PRIV}/stale", f"{PRIV}/x", "releases/y/old"]
    assert plan.delete_paths == [f"{DEST}/{rel}" for rel in plan.deleted]
    assert plan.delete_dirs == [f"{DEST}/releases/y"]
    written = [w.path for w in plan.writes]
    assert written == [f"{DEST}/{PRIV}/d/f", f"{DEST}/{PRIV}/x/f", f"{DEST}/releases/y"]


def test_in_a_shadow_tree_the_original_in_the_way_of_a_type_change_is_not_linked() -> None:
    release = local({**BASE, "releases/y": "y"})
    original = remote({**BASE, "releases/y/old": "was a directory"})
    linked = {"releases/y/old": RemoteLink("releases/y/old", f"{DEST}/releases/y/old")}
    for shadow in ({}, linked):
        plan = build_plan(release, TargetState(DEST, RW, original, shadow, bool(shadow)))
        assert [w.path for w in plan.writes] == [f"{RW}/releases/y"]
        assert not [link for link, _ in plan.links if link.startswith(f"{RW}/releases/y")]
        assert plan.delete_paths == [f"{RW}/releases/y/old" for _ in linked if shadow]
