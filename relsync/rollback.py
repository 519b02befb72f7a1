"""Back to the pristine release without a reboot: what the shadow tree changed, and undoing it.

A shadow tree leaves the release untouched, so going back is re-pointing the code path at the
release, loading its own modules again where the shadow tree ran other code, and purging the
modules only the shadow tree had. An in-place sync has no pristine copy to go back to.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from relsync.engine import (
    SyncOptions,
    SyncReport,
    read_state,
    release_lock,
    stash_for_undo,
    switch_code,
)
from relsync.errors import UsageError
from relsync.pause import pause_point
from relsync.plan import (
    SyncPlan,
    TargetState,
    ebin_dir,
    foreign_entries,
    is_beam,
    module_of,
)
from relsync.release import OTP_APPS, LocalRelease
from relsync.target import RemoteFile, RemoteLink, Target, UpgradeStep
from relsync.upgrade import app_data, upgrade_steps


@dataclass(frozen=True, slots=True)
class ShadowChanges:
    """Modules the running shadow tree has changed against the pristine release."""

    #: Module -> (beam in the release, its SHA-256): it runs other code than the release's.
    changed: dict[str, tuple[str, bytes]]
    #: Modules only the shadow tree has.
    added: list[str]
    #: Module -> (beam in the release, SHA-256): the release has it, the shadow tree does not.
    deleted: dict[str, tuple[str, bytes]]


def shadow_changes(state: TargetState) -> ShadowChanges:
    """Compare the shadow tree's modules (and what relsync loaded) with the release's."""
    original = {
        module_of(rel): (f"{state.dest}/{rel}", e.digest)
        for rel, e in state.original.items()
        if is_beam(rel) and isinstance(e, RemoteFile)
    }
    running: dict[str, bytes | None] = {}  # None: a link to the original
    for rel, entry in state.shadow.items():
        if is_beam(rel):
            running[module_of(rel)] = entry.digest if isinstance(entry, RemoteFile) else None
    running.update(state.loaded)
    changed: dict[str, tuple[str, bytes]] = {}
    added: list[str] = []
    for module, sha in sorted(running.items()):
        if module not in original:
            added.append(module)
        elif module in state.pending or (sha is not None and sha != original[module][1]):
            changed[module] = original[module]
    deleted = {m: o for m, o in sorted(original.items()) if m not in running}
    return ShadowChanges(changed, added, deleted)


def _nothing_to_roll_back(label: str, dest: str) -> str:
    """What a rollback says when no shadow tree is active: true whether the release is
    pristine or was synced in place (the board cannot tell the two apart)."""
    return f"nothing to roll back: {label} runs the release at {dest}, not a shadow tree"


def plan_rollback(state: TargetState) -> SyncPlan:
    """The code path back at the release and its modules loaded again (nothing is written)."""
    if not state.rw:
        raise UsageError(
            "--rollback needs the shadow tree's --destination-rw-path: an in-place sync "
            "replaced the release's own files, so there is no pristine copy to go back to"
        )
    changes = shadow_changes(state)
    plan = SyncPlan(root=state.dest)
    back = {**changes.changed, **changes.deleted}
    plan.reload = [(m, path, sha) for m, (path, sha) in sorted(back.items())]
    plan.new_modules = sorted(changes.deleted)
    plan.purge = changes.added
    # The code path names the shadow tree's directories too: a tree deleted by hand lists
    # nothing, and its applications' directories must still leave the code path.
    # (Not the excluded system libraries: the shadow tree links each of them whole, and their
    # directories stay on the code path, re-pointed at the release.)
    shadow_ebins = {d for rel in state.shadow if (d := ebin_dir(rel))} | {
        rel
        for p in state.code_path
        if p.startswith(f"{state.rw}/")
        and posixpath.dirname(rel := p.removeprefix(f"{state.rw}/")) not in state.excluded_dirs
    }
    original_ebins = {d for rel in state.original if (d := ebin_dir(rel))}
    plan.code_path_replace = [(state.rw, state.dest)]
    plan.code_path_remove = [f"{state.dest}/{d}" for d in sorted(shadow_ebins - original_ebins)]
    plan.code_path_add = [f"{state.dest}/{d}" for d in sorted(original_ebins - shadow_ebins)]
    return plan


def _version(state: TargetState) -> str:
    """The pristine release's version: its one ``releases/VSN/`` holding a ``.rel`` file
    ("" when it has none or several)."""
    found = {
        parts[1]
        for rel in state.original
        if len(parts := rel.split("/")) == 3 and parts[0] == "releases" and rel.endswith(".rel")
    }
    return found.pop() if len(found) == 1 else ""


def _apps_changed(state: TargetState) -> list[str]:
    """The pristine release's ``.app`` files the shadow tree holds other content of, or not at
    all (its application's directory renamed), as target paths: their specs and env go back
    even when no module of theirs changed."""
    found = []
    for rel, entry in state.original.items():
        app = rel.split("/")[1].rpartition("-")[0] if rel.startswith("lib/") else ""
        if not (app and isinstance(entry, RemoteFile) and rel.endswith(f"/ebin/{app}.app")):
            continue
        now = state.shadow.get(rel)
        if not isinstance(now, RemoteLink) and not (
            isinstance(now, RemoteFile) and now.digest == entry.digest
        ):
            found.append(f"{state.dest}/{rel}")
    return found


def running_tree(state: TargetState) -> str | None:
    """Another tree the VM runs the release's applications from: neither the release nor the
    shadow tree at ``state.rw`` (a sync into another ``-q``), or None."""
    ebins = {d for rel in state.original if (d := ebin_dir(rel))}
    for path in state.code_path:
        root, _, rel = path.rpartition("/lib/")
        if (
            f"lib/{rel}" in ebins
            and root not in (state.dest, state.rw)
            and rel.partition("-")[0] not in OTP_APPS  # also in the board's own OTP
        ):
            return root
    return None


def _clean(state: TargetState) -> tuple[list[str], list[str]]:
    """Every entry of the shadow tree relsync put there, and its directories deepest first
    (not ``rw`` itself, nor one holding what relsync did not put there: kept); the release's
    directories too, which a ``--clean`` killed after its files were deleted left behind,
    empty."""
    assert state.rw is not None
    foreign = foreign_entries(state)
    paths = [f"{state.rw}/{rel}" for rel in sorted(state.shadow) if rel not in foreign]
    dirs = _dirs(state.rw, [*state.shadow, *state.original]) - _dirs(state.rw, foreign)
    return paths, sorted(dirs, key=lambda d: (-d.count("/"), d))


def _dirs(rw: str, rels: Iterable[str]) -> set[str]:
    """The directories of ``rels`` in the tree at ``rw`` (not ``rw`` itself)."""
    found: set[str] = set()
    for rel in rels:
        parent = posixpath.dirname(rel)
        while parent:
            found.add(f"{rw}/{parent}")
            parent = posixpath.dirname(parent)
    return found


async def rollback(
    target: Target,
    options: SyncOptions,
    exclude: tuple[str, ...],
    *,
    release: LocalRelease | None = None,
    clean: bool = False,
) -> SyncReport:
    """Put ``target`` back on its pristine release (``options.upgrade``: converting process
    state down, with steps judged from ``release``'s beams); ``clean`` removes the shadow tree."""
    started = time.perf_counter()
    try:
        state = await read_state(target, exclude, options)
        if not state.shadow_active and (other := running_tree(state)):
            raise UsageError(
                f"--rollback -q {state.rw}: {target.label} runs the shadow tree {other}, not "
                f"this one; roll back with -q {other}"
            )
        plan = plan_rollback(state)
        report = SyncReport(target.label, plan, [], dry_run=options.dry_run, action="rollback")
        if not state.shadow_active and not state.pending:
            plan.code_path_replace = []
            report.warnings.append(_nothing_to_roll_back(target.label, state.dest))
            plan.reload, plan.purge, plan.new_modules = [], [], []
            plan.code_path_add, plan.code_path_remove = [], []
        elif options.upgrade and release is not None:
            report.upgrade = _unconverted(upgrade_steps(plan, release, state, down=True), state)
            apps, report.sys_config = app_data(plan, state.original, _version(state))
            report.app_specs = sorted({*apps, *_apps_changed(state)})
        elif options.upgrade:
            report.upgrade = [UpgradeStep("load_module", m, p, s) for m, p, s in plan.reload]
        if clean:
            plan.delete_paths, plan.delete_dirs = _clean(state)
        if not options.dry_run:
            await _carry_out(target, options, report)
    finally:
        await release_lock(target)
    report.seconds = time.perf_counter() - started
    return report


def _unconverted(steps: list[UpgradeStep], state: TargetState) -> list[UpgradeStep]:
    """``steps`` with a plain load for an update of a module whose processes still run the
    release's code (its file replaced, never loaded: a killed sync's pending module): only
    what was converted up is converted down."""
    return [
        replace(s, action="load_module", change="", extra=[])
        if s.action == "update" and state.loaded.get(s.module, s.digest) == s.digest
        else s
        for s in steps
    ]


async def _carry_out(target: Target, options: SyncOptions, report: SyncReport) -> None:
    plan = report.plan
    await stash_for_undo(target, report)
    if plan.reload or plan.purge:  # a module kept loaded (in use) goes on the next run
        await target.mark_pending([m for m, _, _ in plan.reload] + plan.purge)
    await switch_code(target, options, report, down=True)
    if report.upgrade_undone:  # back on the shadow tree's code: its code path, its files
        rw = options.rw_path or ""
        back = [f"{rw}{p.removeprefix(plan.root)}" for p in plan.code_path_remove]
        gone = [f"{rw}{p.removeprefix(plan.root)}" for p in plan.code_path_add]
        await target.update_code_path([(plan.root, rw)], back, gone)
        return
    if plan.delete_paths or plan.delete_dirs:
        await target.delete_files(plan.delete_paths)
        await pause_point("shadow_files_deleted")
        stuck = await target.delete_dirs(plan.delete_dirs)
        report.warnings += [f"directory not empty, left in place: {d}" for d in stuck]
