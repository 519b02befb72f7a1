"""The sync plan: what is written, linked, deleted and reloaded, in place and in a shadow tree."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from relsync.plan import (
    DELTA_MIN,
    SyncPlan,
    TargetState,
    build_plan,
    effective_files,
    module_of,
)
from relsync.release import FileKind, LocalFile, LocalRelease, classify
from relsync.target import RemoteEntry, RemoteFile, RemoteLink

DEST, RW = "/srv/erlang", "/data/relsync"


def sha(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def local(files: dict[str, str], mode: int = 0o644) -> LocalRelease:
    rel = LocalRelease(root=Path("/tmp/rel"), name="demo", version="0.1.0")
    for path, content in files.items():
        m = 0o755 if "/priv/" in path else mode
        rel.files[path] = LocalFile(
            path, f"/tmp/rel/{path}", len(content), m, sha(content), classify(path, m)
        )
    return rel


def remote(files: dict[str, str]) -> dict[str, RemoteEntry]:
    out: dict[str, RemoteEntry] = {}
    for path, content in files.items():
        m = 0o755 if "/priv/" in path else 0o644
        out[path] = RemoteFile(path, len(content), m, sha(content))
    return out


BASE = {
    "lib/demo-0.1.0/ebin/demo_app.beam": "app v1",
    "lib/demo-0.1.0/ebin/demo_counter.beam": "counter v1",
    "lib/demo-0.1.0/ebin/demo.app": "appfile",
    "lib/demo-0.1.0/priv/demo_port": "port v1",
    "releases/0.1.0/demo.rel": "rel",
}


def test_identical_release_needs_nothing_in_place() -> None:
    plan = build_plan(local(BASE), TargetState(DEST, None, remote(BASE)))
    assert not plan.touches_target
    assert (plan.added, plan.changed, plan.deleted) == ([], [], [])


def test_in_place_changes_writes_and_reloads() -> None:
    new = dict(BASE)
    new["lib/demo-0.1.0/ebin/demo_counter.beam"] = "counter v2"
    new["lib/demo-0.1.0/ebin/demo_new.beam"] = "brand new"
    del new["lib/demo-0.1.0/ebin/demo_app.beam"]
    plan = build_plan(local(new), TargetState(DEST, None, remote(BASE)))
    assert plan.added == ["lib/demo-0.1.0/ebin/demo_new.beam"]
    assert plan.changed == ["lib/demo-0.1.0/ebin/demo_counter.beam"]
    assert plan.deleted == ["lib/demo-0.1.0/ebin/demo_app.beam"]
    assert sorted(w.path for w in plan.writes) == [
        f"{DEST}/lib/demo-0.1.0/ebin/demo_counter.beam",
        f"{DEST}/lib/demo-0.1.0/ebin/demo_new.beam",
    ]
    assert plan.delete_paths == [f"{DEST}/lib/demo-0.1.0/ebin/demo_app.beam"]
    assert [m for m, _, _ in plan.reload] == ["demo_counter", "demo_new"]
    assert plan.purge == ["demo_app"]
    assert plan.code_path_replace == [] and not plan.links


def test_mode_change_alone_rewrites_the_file() -> None:
    rel = local(BASE)
    port = rel.files["lib/demo-0.1.0/priv/demo_port"]
    rel.files[port.rel] = LocalFile(port.rel, port.path, port.size, 0o700, port.digest, port.kind)
    plan = build_plan(rel, TargetState(DEST, None, remote(BASE)))
    assert plan.changed == ["lib/demo-0.1.0/priv/demo_port"]
    assert [w.mode for w in plan.writes] == [0o700]
    assert not plan.reload


def test_files_outside_lib_are_never_deleted() -> None:
    target = remote({**BASE, "releases/RELEASES": "x", "bin/extra": "y"})
    plan = build_plan(local(BASE), TargetState(DEST, None, target))
    assert plan.deleted == [] and plan.delete_paths == []


def test_shared_libraries_on_target_are_left_alone() -> None:
    target = remote({**BASE, "lib/demo-0.1.0/priv/nif.so": "elf"})
    plan = build_plan(local(BASE), TargetState(DEST, None, target))
    assert plan.deleted == []


def test_removed_app_deletes_its_directories_deepest_first() -> None:
    target = remote({**BASE, "lib/old-1.0/ebin/old.beam": "o", "lib/old-1.0/priv/x/y": "p"})
    plan = build_plan(local(BASE), TargetState(DEST, None, target))
    assert plan.purge == ["old"]
    assert plan.delete_dirs == [
        f"{DEST}/lib/old-1.0/priv/x",
        f"{DEST}/lib/old-1.0/ebin",
        f"{DEST}/lib/old-1.0/priv",
        f"{DEST}/lib/old-1.0",
    ]
    assert plan.code_path_remove == [f"{DEST}/lib/old-1.0/ebin"]


def test_new_app_is_added_to_the_code_path() -> None:
    rel = local({**BASE, "lib/extra-2.0/ebin/extra.beam": "e"})
    plan = build_plan(rel, TargetState(DEST, None, remote(BASE)))
    assert plan.code_path_add == [f"{DEST}/lib/extra-2.0/ebin"]
    assert [m for m, _, _ in plan.reload] == ["extra"]


def _shadow_after(plan: SyncPlan, before: dict[str, RemoteEntry]) -> dict[str, RemoteEntry]:
    """Apply a plan's shadow operations to a manifest, as the target would."""
    after = dict(before)
    for path in plan.delete_paths:
        after.pop(path.removeprefix(RW + "/"), None)
    for w in plan.writes:
        rel = w.path.removeprefix(RW + "/")
        after[rel] = RemoteFile(rel, w.size, w.mode, w.digest)
    for link, target in plan.links:
        rel = link.removeprefix(RW + "/")
        after[rel] = RemoteLink(rel, target)
    return after


def test_first_shadow_sync_mirrors_the_release() -> None:
    new = {**BASE, "lib/demo-0.1.0/ebin/demo_counter.beam": "counter v2"}
    state = TargetState(DEST, RW, remote(BASE), excluded_dirs=("lib/kernel-8.5", "erts-13.1"))
    plan = build_plan(local(new), state)
    assert [w.path for w in plan.writes] == [f"{RW}/lib/demo-0.1.0/ebin/demo_counter.beam"]
    links = dict(plan.links)
    assert links[f"{RW}/lib/demo-0.1.0/ebin/demo_app.beam"] == (
        f"{DEST}/lib/demo-0.1.0/ebin/demo_app.beam"
    )
    assert links[f"{RW}/lib/kernel-8.5"] == f"{DEST}/lib/kernel-8.5"
    assert links[f"{RW}/erts-13.1"] == f"{DEST}/erts-13.1"
    assert links[f"{RW}/.relsync-shadow"] == DEST  # the marker: the release it mirrors
    assert len(links) == len(BASE) - 1 + 2 + 1
    assert plan.code_path_replace == [(DEST, RW)]
    assert [m for m, _, _ in plan.reload] == ["demo_counter"]
    assert [m for m, path, _ in plan.reload] and plan.reload[0][1].startswith(RW + "/")


def test_second_shadow_sync_is_incremental_and_converges() -> None:
    v2 = {**BASE, "lib/demo-0.1.0/ebin/demo_counter.beam": "counter v2"}
    first = build_plan(local(v2), TargetState(DEST, RW, remote(BASE)))
    shadow = _shadow_after(first, {})
    loaded = {m: s for m, _, s in first.reload}
    # Same release again: nothing to do at all.
    again = build_plan(local(v2), TargetState(DEST, RW, remote(BASE), shadow, True, loaded=loaded))
    assert not again.touches_target
    # Back to the original content: the real file becomes a symlink again, and it reloads.
    back = build_plan(local(BASE), TargetState(DEST, RW, remote(BASE), shadow, True, loaded=loaded))
    assert back.links == [
        (
            f"{RW}/lib/demo-0.1.0/ebin/demo_counter.beam",
            f"{DEST}/lib/demo-0.1.0/ebin/demo_counter.beam",
        )
    ]
    assert back.writes == [] and back.code_path_replace == []
    assert [m for m, _, _ in back.reload] == ["demo_counter"]


def test_shadow_deletion_removes_the_entry_not_the_original() -> None:
    shadow = _shadow_after(build_plan(local(BASE), TargetState(DEST, RW, remote(BASE))), {})
    smaller = dict(BASE)
    del smaller["lib/demo-0.1.0/ebin/demo_app.beam"]
    plan = build_plan(local(smaller), TargetState(DEST, RW, remote(BASE), shadow, True))
    assert plan.delete_paths == [f"{RW}/lib/demo-0.1.0/ebin/demo_app.beam"]
    assert all(p.startswith(RW) for p in plan.delete_paths + [w.path for w in plan.writes])
    assert plan.purge == ["demo_app"]


def test_stale_shadow_after_reboot_is_reconciled() -> None:
    # Before the reboot the shadow held v2 and a file that is gone from the release since.
    stale = _shadow_after(
        build_plan(
            local(
                {
                    **BASE,
                    "lib/demo-0.1.0/ebin/demo_counter.beam": "counter v2",
                    "lib/demo-0.1.0/ebin/gone.beam": "g",
                }
            ),
            TargetState(DEST, RW, remote(BASE)),
        ),
        {},
    )
    v3 = {**BASE, "lib/demo-0.1.0/ebin/demo_counter.beam": "counter v3"}
    # After the reboot the VM runs the original again: shadow present but not active.
    plan = build_plan(local(v3), TargetState(DEST, RW, remote(BASE), stale, False))
    assert plan.code_path_replace == [(DEST, RW)]
    assert [w.path for w in plan.writes] == [f"{RW}/lib/demo-0.1.0/ebin/demo_counter.beam"]
    assert plan.delete_paths == [f"{RW}/lib/demo-0.1.0/ebin/gone.beam"]
    assert [m for m, _, _ in plan.reload] == ["demo_counter"]
    assert plan.purge == []  # `gone` never ran: the VM booted the original release
    assert _shadow_after(plan, stale).keys() == {*BASE, ".relsync-shadow"}


def test_a_write_that_was_not_reloaded_is_reloaded_next_time() -> None:
    v2 = {**BASE, "lib/demo-0.1.0/ebin/demo_counter.beam": "counter v2"}
    shadow = _shadow_after(build_plan(local(v2), TargetState(DEST, RW, remote(BASE))), {})
    # The previous client died after writing and switching the path, before reloading.
    plan = build_plan(
        local(v2),
        TargetState(
            DEST, RW, remote(BASE), shadow, True, loaded={"demo_counter": sha("counter v1")}
        ),
    )
    assert [m for m, _, _ in plan.reload] == ["demo_counter"]
    assert plan.writes == []


def test_effective_files_follow_links_only_to_the_original() -> None:
    shadow: dict[str, RemoteEntry] = {
        "lib/a/ebin/x.beam": RemoteLink("lib/a/ebin/x.beam", f"{DEST}/lib/a/ebin/x.beam"),
        "lib/a/ebin/y.beam": RemoteLink("lib/a/ebin/y.beam", "/elsewhere/y.beam"),
    }
    original = remote({"lib/a/ebin/x.beam": "x", "lib/a/ebin/y.beam": "y"})
    files = effective_files(TargetState(DEST, RW, original, shadow, True))
    assert set(files) == {"lib/a/ebin/x.beam"}


def test_classify() -> None:
    assert classify("lib/a-1/ebin/a.beam", 0o644) is FileKind.BEAM
    assert classify("lib/a-1/ebin/a.app", 0o644) is FileKind.APP
    assert classify("lib/a-1/priv/port", 0o755) is FileKind.PORT
    assert classify("lib/a-1/priv/data.txt", 0o644) is FileKind.PRIV
    assert classify("releases/1/sys.config", 0o644) is FileKind.OTHER


def test_modules_left_pending_are_handled_whatever_the_files_say() -> None:
    v2 = {**BASE, "lib/demo-0.1.0/ebin/demo_counter.beam": "counter v2"}
    shadow = _shadow_after(build_plan(local(v2), TargetState(DEST, RW, remote(BASE))), {})
    # A sync wrote everything and died before loading demo_counter and deleting `old`.
    state = TargetState(
        DEST, RW, remote(BASE), shadow, True, pending=frozenset({"demo_counter", "old"})
    )
    plan = build_plan(local(v2), state)
    assert plan.writes == [] and [m for m, _, _ in plan.reload] == ["demo_counter"]
    assert plan.purge == ["old"]


def _temp(rel: str, size: int = 3) -> RemoteFile:
    """A temp file as a relsyncd from before issue 29 lists it: unhashed (an empty hash)."""
    return RemoteFile(rel, size, 0o644, b"")


def test_temp_files_left_by_an_interrupted_sync_are_removed_in_place() -> None:
    part = "lib/demo-0.1.0/priv/.relsync-tmp.demo_port.part"
    top = "releases/0.1.0/.relsync-tmp.demo.rel"
    plan = build_plan(
        local(BASE), TargetState(DEST, None, {**remote(BASE), part: _temp(part), top: _temp(top)})
    )
    assert plan.stale_temps == [part, top]
    assert plan.delete_paths == [f"{DEST}/{part}", f"{DEST}/{top}"]
    assert (plan.added, plan.changed, plan.deleted, plan.writes) == ([], [], [], [])
    assert plan.touches_target


def test_temp_files_in_the_shadow_tree_are_removed_not_in_the_original() -> None:
    first = build_plan(local(BASE), TargetState(DEST, RW, remote(BASE)))
    shadow = _shadow_after(first, {})
    part = "lib/demo-0.1.0/ebin/.relsync-tmp.demo_counter.beam.part"
    in_original = "lib/demo-0.1.0/ebin/.relsync-tmp.x"
    plan = build_plan(
        local(BASE),
        TargetState(
            DEST, RW, {**remote(BASE), in_original: _temp(in_original)},
            {**shadow, part: _temp(part)}, True,
        ),
    )  # fmt: skip
    assert plan.stale_temps == [part]
    assert plan.delete_paths == [f"{RW}/{part}"]
    assert (plan.writes, plan.links, plan.deleted) == ([], [], [])


BIG = "lib/demo-0.1.0/priv/big.bin"


def big(release: LocalRelease, content: str, size: int) -> LocalRelease:
    """``release`` with BIG holding ``content`` but claiming ``size`` bytes."""
    release.files[BIG] = LocalFile(BIG, f"/tmp/rel/{BIG}", size, 0o644, sha(content),
                                   classify(BIG, 0o644))  # fmt: skip
    return release


def big_remote(content: str, size: int) -> RemoteFile:
    return RemoteFile(BIG, size, 0o644, sha(content))


def test_in_place_a_big_changed_file_has_the_file_it_replaces_as_base() -> None:
    target = {**remote(BASE), BIG: big_remote("big v1", DELTA_MIN)}
    plan = build_plan(big(local(BASE), "big v2", DELTA_MIN), TargetState(DEST, None, target))
    assert [(w.path, w.base) for w in plan.writes] == [(f"{DEST}/{BIG}", f"{DEST}/{BIG}")]


def test_small_new_and_shrunken_files_go_whole() -> None:
    new = {**BASE, "lib/demo-0.1.0/ebin/demo_counter.beam": "counter v2"}
    # Just under the threshold; a file the target lacks; a base too small to copy half from.
    cases = [
        ({**remote(BASE), BIG: big_remote("v1", DELTA_MIN)}, DELTA_MIN - 1),
        (remote(BASE), 4 * DELTA_MIN),
        ({**remote(BASE), BIG: big_remote("v1", DELTA_MIN)}, 2 * DELTA_MIN + 1),
    ]
    for target, size in cases:
        for rw in (None, RW):
            plan = build_plan(big(local(new), "v2", size), TargetState(DEST, rw, target))
            assert len(plan.writes) == 2
            assert [w.base for w in plan.writes] == [None, None], (size, rw)


def test_in_place_a_symlink_is_no_base() -> None:
    target = {**remote(BASE), BIG: RemoteLink(BIG, "/elsewhere/big.bin")}
    plan = build_plan(big(local(BASE), "big v2", DELTA_MIN), TargetState(DEST, None, target))
    assert [(w.path, w.base) for w in plan.writes] == [(f"{DEST}/{BIG}", None)]


def test_shadow_first_sync_takes_the_original_as_base() -> None:
    original = {**remote(BASE), BIG: big_remote("big v1", 3 * DELTA_MIN)}
    plan = build_plan(big(local(BASE), "big v2", 3 * DELTA_MIN), TargetState(DEST, RW, original))
    assert [(w.path, w.base) for w in plan.writes] == [(f"{RW}/{BIG}", f"{DEST}/{BIG}")]


def test_shadow_prefers_its_own_copy_then_the_original_behind_a_link() -> None:
    original = {**remote(BASE), BIG: big_remote("big v1", DELTA_MIN)}
    v2 = big(local(BASE), "big v2", DELTA_MIN)
    shadow = _shadow_after(build_plan(v2, TargetState(DEST, RW, original)), {})
    assert isinstance(shadow[BIG], RemoteFile)  # v2 is a real file in the shadow now
    v3 = build_plan(
        big(local(BASE), "big v3", DELTA_MIN), TargetState(DEST, RW, original, shadow, True)
    )
    assert [(w.path, w.base) for w in v3.writes] == [(f"{RW}/{BIG}", f"{RW}/{BIG}")]
    # Back to v1 links the original again; a later v4 then deltas against that original.
    v1 = big(local(BASE), "big v1", DELTA_MIN)
    linked = _shadow_after(build_plan(v1, TargetState(DEST, RW, original, shadow, True)), shadow)
    assert linked[BIG] == RemoteLink(BIG, f"{DEST}/{BIG}")
    v4 = build_plan(
        big(local(BASE), "big v4", DELTA_MIN), TargetState(DEST, RW, original, linked, True)
    )
    assert [(w.path, w.base) for w in v4.writes] == [(f"{RW}/{BIG}", f"{DEST}/{BIG}")]


def test_shadow_without_any_regular_copy_sends_whole() -> None:
    original = {**remote(BASE), BIG: RemoteLink(BIG, "/elsewhere/big.bin")}
    plan = build_plan(big(local(BASE), "big v2", DELTA_MIN), TargetState(DEST, RW, original))
    assert [(w.path, w.base) for w in plan.writes] == [(f"{RW}/{BIG}", None)]


def test_a_deleted_file_stays_deleted_on_every_later_shadow_sync() -> None:
    # Files the release dropped: a module and a priv file under lib/, and a boot file outside it.
    smaller = dict(BASE)
    del smaller["lib/demo-0.1.0/ebin/demo_app.beam"]
    first = build_plan(local(smaller), TargetState(DEST, RW, remote(BASE)))
    assert f"{RW}/lib/demo-0.1.0/ebin/demo_app.beam" not in dict(first.links)
    shadow = _shadow_after(first, {})
    for _ in range(3):  # the same release again, and again: nothing to do, nothing linked back
        again = build_plan(local(smaller), TargetState(DEST, RW, remote(BASE), shadow, True))
        assert not again.touches_target, again
        shadow = _shadow_after(again, shadow)
    assert "lib/demo-0.1.0/ebin/demo_app.beam" not in shadow


def test_a_beam_the_embedded_vm_has_not_loaded_is_loaded() -> None:
    # After a reboot the VM loads what its boot script names; a module synced in place since
    # has its beam on disk and nothing loaded: the next sync loads it, and only it.
    everything = frozenset(module_of(r) for r in BASE if r.endswith(".beam"))
    extra = {**BASE, "lib/demo-0.1.0/ebin/late.beam": "late"}
    state = TargetState(DEST, None, remote(extra), vm_loaded=everything)
    assert [m for m, _, _ in build_plan(local(extra), state).reload] == ["late"]
    assert build_plan(local(extra), replace(state, vm_loaded=everything | {"late"})).reload == []
    assert build_plan(local(extra), replace(state, vm_loaded=None)).reload == []  # interactive


def _dev_mode_board() -> dict[str, RemoteEntry]:
    """How the board lists a dev-mode release: the application and the boot configuration
    are symlinks into the project, whose files it does not walk into."""
    return {
        "lib/demo-0.1.0": RemoteLink("lib/demo-0.1.0", "/home/me/demo/_build/default/lib/demo"),
        "releases/0.1.0/demo.rel": RemoteFile("releases/0.1.0/demo.rel", 3, 0o644, sha("rel")),
        "releases/0.1.0/sys.config": RemoteLink(
            "releases/0.1.0/sys.config", "/home/me/demo/config/sys.config"
        ),
    }


def test_the_local_release_itself_is_never_written_only_reloaded() -> None:
    release = local({**BASE, "releases/0.1.0/sys.config": "[]."})
    state = TargetState(
        DEST, None, _dev_mode_board(), local_tree=True, outdated={"demo_counter": "changed"}
    )
    plan = build_plan(release, state)
    assert (plan.writes, plan.links, plan.delete_paths, plan.delete_dirs) == ([], [], [], [])
    assert (plan.added, plan.changed, plan.deleted) == ([], [], [])
    assert plan.code_path_add == plan.code_path_remove == []
    assert [m for m, _, _ in plan.reload] == ["demo_counter"] and plan.new_modules == []
    # The VM runs what the beams hold (whatever relsync loaded before): nothing to do.
    again = replace(state, outdated={}, loaded={"demo_app": sha("app v0")})
    assert not build_plan(release, again).touches_target


def test_a_module_the_local_release_gained_is_loaded_as_new() -> None:
    release = local({**BASE, "lib/demo-0.1.0/ebin/demo_new.beam": "new"})
    state = TargetState(DEST, None, {}, local_tree=True, outdated={"demo_new": "new"})
    plan = build_plan(release, state)
    assert [m for m, _, _ in plan.reload] == plan.new_modules == ["demo_new"]
    assert plan.writes == []


def test_a_module_relsync_loaded_that_the_build_dropped_is_purged() -> None:
    # The board runs the local release: no file of it is deleted by relsync, the build removed
    # the beam; the module relsync loaded from it earlier still runs and goes.
    state = TargetState(DEST, None, {}, local_tree=True, loaded={"demo_gone": sha("gone")})
    plan = build_plan(local(BASE), state)
    assert plan.purge == ["demo_gone"] and plan.reload == [] and plan.writes == []


def test_a_copied_dev_mode_release_has_its_links_replaced_never_written_through() -> None:
    release = local({**BASE, "releases/0.1.0/sys.config": "[]."})
    plan = build_plan(release, TargetState(DEST, None, _dev_mode_board()))
    # The link into the project goes before anything is written below its path.
    assert f"{DEST}/lib/demo-0.1.0" in plan.delete_paths
    assert plan.delete_paths.index(f"{DEST}/lib/demo-0.1.0") == 0
    written = {w.path for w in plan.writes}
    assert f"{DEST}/lib/demo-0.1.0/ebin/demo_app.beam" in written
    # A link where the release has a file is replaced by the file's rename, not written to.
    assert f"{DEST}/releases/0.1.0/sys.config" in written
    assert f"{DEST}/releases/0.1.0/sys.config" not in plan.delete_paths
