"""``relsync --status``: what a board runs, against its pristine release and the local one."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, TextIO

from relsync.engine import SyncOptions
from relsync.errors import ExitCode, RelsyncError
from relsync.local_scan import LocalScan, scan_while_reading
from relsync.plan import SyncPlan, build_plan
from relsync.report import write_json
from relsync.rollback import ShadowChanges, running_tree, shadow_changes
from relsync.target import ModuleResult, Target
from relsync.words import human, plural, shown


@dataclass(frozen=True, slots=True)
class BoardStatus:
    """One board's state, read without the sync lock and without changing anything."""

    label: str
    dest: str
    rw: str | None
    shadow_active: bool
    #: Modules the shadow tree changed against the pristine release (None: in place, where
    #: the release's own files are what relsync wrote).
    pristine: ShadowChanges | None
    pending: list[str]
    #: What a sync of the local release would do.
    local: SyncPlan
    old_code: list[ModuleResult]
    #: Processes suspended (an upgrade leaves none: another tool may).
    suspended: list[str]
    #: Another shadow tree the board runs, not ``rw`` (see :func:`running_tree`).
    running_tree: str | None = None
    #: Why the board could not be read (the other fields are then empty).
    error: str | None = None
    exit_code: ExitCode = ExitCode.OK

    @classmethod
    def failed(cls, label: str, rw: str | None, exc: RelsyncError) -> BoardStatus:
        """A board that could not be read: its error, nothing else known."""
        return cls(label, "", rw, False, None, [], SyncPlan(root=rw or ""), [], [],
                   error=str(exc), exit_code=exc.exit_code)  # fmt: skip


async def board_status(target: Target, local: LocalScan, options: SyncOptions) -> BoardStatus:
    """Read ``target`` and compare it with its release and with the local one."""
    release, state = await scan_while_reading(target, local, options)
    return BoardStatus(
        label=target.label,
        dest=state.dest,
        rw=state.rw,
        shadow_active=state.shadow_active,
        pristine=shadow_changes(state) if state.rw and state.shadow_active else None,
        pending=sorted(state.pending),
        local=build_plan(release, state),
        old_code=await target.old_code(),
        suspended=await target.suspended(),
        running_tree=None if state.shadow_active else running_tree(state),
    )


def status_dict(status: BoardStatus) -> dict[str, Any]:
    """A JSON-ready description."""
    pristine = status.pristine
    return {
        "target": status.label,
        "ok": status.exit_code == 0,
        "exit_code": int(status.exit_code),
        "error": status.error,
        "destination_path": status.dest,
        "shadow_tree": status.rw,
        "shadow_active": status.shadow_active,
        "running_tree": status.running_tree,
        "against_pristine": None
        if pristine is None
        else {
            "changed": sorted(pristine.changed),
            "added": pristine.added,
            "deleted": sorted(pristine.deleted),
        },
        "pending": status.pending,
        "against_local": {
            "added": status.local.added,
            "changed": status.local.changed,
            "deleted": status.local.deleted,
            "reload": [m for m, _, _ in status.local.reload],
            "purge": status.local.purge,
        },
        "old_code": {m.module: list(m.processes) for m in status.old_code},
        "suspended": status.suspended,
    }


def _list(names: list[str]) -> str:
    return ", ".join(names[:8]) + (f", … (+{len(names) - 8})" if len(names) > 8 else "")


def print_status(status: BoardStatus, out: TextIO = sys.stdout) -> None:
    """One screen."""

    def w(line: str) -> None:
        out.write(human(line))

    if status.error:
        w(f"relsync: {status.label} could not be read: {status.error}\n")
        return
    if status.running_tree:
        given = f" (not {status.rw})" if status.rw else ""
        tree = f"but it runs the shadow tree {status.running_tree}{given}: give -q for it"
    elif status.rw:
        tree = f"shadow tree {status.rw}: " + ("active" if status.shadow_active else "not active")
    else:
        tree = "in place (no shadow tree)"
    w(f"relsync: {status.label} runs the release at {status.dest}, {tree}\n")
    pristine = status.pristine
    if pristine is not None:
        counts = (
            f"{plural(len(pristine.changed), 'module')} changed, {len(pristine.added)} added, "
            f"{len(pristine.deleted)} deleted"
        )
        w(f"  against the pristine release: {counts}\n")
        for label, names in (
            ("changed", sorted(pristine.changed)),
            ("added", pristine.added),
            ("deleted", sorted(pristine.deleted)),
        ):
            if names:
                w(f"    {label}: {_list([shown(n) for n in names])}\n")
    elif status.rw:
        w("  against the pristine release: the same (it runs the release itself)\n")
    local = status.local
    if local.touches_target:
        w(
            f"  against the local release: {plural(len(local.added), 'file')} to add, "
            f"{len(local.changed)} to change, {len(local.deleted)} to delete; "
            f"{plural(len(local.reload), 'module')} to load, {len(local.purge)} to delete\n"
        )
    else:
        w("  against the local release: up to date\n")
    if status.pending:
        w(
            "  pending (left by a sync that did not finish, or deleted but still in use): "
            f"{_list([shown(n) for n in status.pending])}\n"
        )
    for m in status.old_code:
        w(f"  old code of {shown(m.module)} still runs in {', '.join(m.processes)}\n")
    if not status.old_code:
        w("  no process runs old code\n")
    if status.suspended:
        w(f"  suspended (resume them, or they answer nothing): {_list(status.suspended)}\n")


def print_status_json(statuses: list[BoardStatus], out: TextIO = sys.stdout) -> None:
    """One JSON object on one line, the shape of a sync's (``{"ok", "exit_code", "error",
    "boards": [...]}``), for one board and many; the top-level error is the first failed
    board's."""
    write_json([status_dict(s) for s in statuses], out)
