"""One sync, in order: read the target -> plan -> presync -> transfer -> code path -> reload ->
postsync. The engine only sequences; the plan decides and the target carries it out."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import posixpath
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from relsync.errors import BusyError, ExitCode, HookError, TargetError, UsageError
from relsync.otp_check import check_apps_present, check_beams_fit, release_apps
from relsync.pause import pause_point
from relsync.plan import (
    SHADOW_MARKER,
    SyncPlan,
    TargetState,
    boot_files_changed,
    build_plan,
    foreign_entries,
    is_beam,
    module_of,
)
from relsync.release import FileKind, LocalRelease, Skipped
from relsync.target import (
    HookResult,
    ModuleResult,
    Progress,
    Target,
    UpgradeEvent,
    UpgradeStep,
)
from relsync.transfer import apply_files
from relsync.upgrade import app_data, upgrade_steps
from relsync.words import modules, plural

if TYPE_CHECKING:  # relsync.hooks (tempfile, erlc) is imported only when there is a hook
    from relsync.hooks import Hook


@dataclass(frozen=True, slots=True)
class SyncOptions:
    """How to sync: where the release is on the target and what to do around it."""

    dest_path: str = "/srv/erlang"
    rw_path: str | None = None
    hook: Hook | None = None
    hook_timeout: float = 60.0
    brutal_purge: bool = False
    dry_run: bool = False
    #: How long to wait for another sync of the same board to finish.
    lock_timeout: float = 30.0
    #: Load modules as an appup would (processes suspended, state converted); see upgrade.py.
    upgrade: bool = False
    #: Limit for each process's suspend, code_change and resume during an upgrade.
    upgrade_timeout: float = 10.0
    #: The release at ``dest_path`` is the local release's own directory (see
    #: :func:`relsync.destination.runs_local_release`): nothing is written, only reloaded.
    local_tree: bool = False
    #: The ``-q`` given for a board that runs the local release itself (so not used).
    unused_rw_path: str | None = None


@dataclass(slots=True)
class SyncReport:
    """Everything a person (or ``--json``) needs to know about one sync."""

    label: str
    plan: SyncPlan
    skipped: list[Skipped]
    dry_run: bool = False
    #: ``sync`` or ``rollback`` (see relsync.rollback).
    action: str = "sync"
    #: How the target hashes files: ``sha256``, or ``md5`` without crypto.
    hash: str = "sha256"
    modules: list[ModuleResult] = field(default_factory=list)
    hooks: dict[str, HookResult] = field(default_factory=dict)
    bytes_sent: int = 0
    #: Target paths of the files that went as a block delta (see ``plan.writes``).
    deltas: list[str] = field(default_factory=list)
    #: With ``--upgrade``: the steps (also in a dry run) and what they did to processes.
    upgrade: list[UpgradeStep] = field(default_factory=list)
    events: list[UpgradeEvent] = field(default_factory=list)
    #: The upgrade failed and every step of it was undone (the code from before runs).
    upgrade_undone: bool = False
    #: With ``--upgrade``: the ``.app`` files and ``sys.config`` the applications' specs and
    #: env are updated from (see :func:`relsync.upgrade.app_data`).
    app_specs: list[str] = field(default_factory=list)
    sys_config: str | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    exit_code: ExitCode = ExitCode.OK


#: Called with the total number of bytes to send before the transfer starts.
TransferStart = Callable[[int], None]


def _excluded(rel: str, prefixes: tuple[str, ...]) -> bool:
    return rel.startswith(prefixes)


#: How often a sync waiting for a busy board asks again.
LOCK_POLL = 0.5


def client_label() -> str:
    """Who we are, as a board shows it to another sync that finds it busy."""
    return f"{getpass.getuser()}@{socket.gethostname()} (pid {os.getpid()})"


def check_paths(options: SyncOptions, resolved: tuple[str, str] | None = None) -> None:
    """Refuse a shadow tree that is the release, or inside it, or holds it: its links would
    point at themselves, or a sync would write into what it mirrors. ``resolved``: both
    paths as the target resolves them (through its symlinks), when it said."""
    if not options.rw_path:
        return
    dest, rw = resolved or (options.dest_path, options.rw_path)
    dest, rw = posixpath.normpath(dest), posixpath.normpath(rw)
    if dest == rw or rw.startswith(f"{dest.rstrip('/')}/") or dest.startswith(f"{rw.rstrip('/')}/"):
        how = "is" if dest == rw else "is inside" if len(rw) > len(dest) else "contains"
        seen = f" (on the board: {rw} and {dest})" if resolved else ""
        raise UsageError(
            f"--destination-rw-path {options.rw_path} {how} the release at "
            f"--destination-path {options.dest_path}{seen}; give a writable directory "
            "outside it, e.g. /data/relsync"
        )


async def read_state(target: Target, excl: tuple[str, ...], options: SyncOptions) -> TargetState:
    """Ask the target for everything the plan needs. Only the release's ``exclude_prefixes``
    are needed, so it may run while the release is still being scanned.

    Unless it is a dry run, this takes the board's sync lock first (released by
    :func:`sync`, or when the connection closes), waiting up to ``options.lock_timeout`` for
    another sync to finish."""
    check_paths(options)
    dest, rw = options.dest_path.rstrip("/"), (options.rw_path or "").rstrip("/") or None
    lock = None if options.dry_run else client_label()
    deadline = time.monotonic() + options.lock_timeout
    while True:
        try:
            seen = await target.read(dest, excl, rw, lock)
            break
        except BusyError as busy:
            left = deadline - time.monotonic()
            if left <= 0:
                since = f" for {time.time() - busy.since:.0f} s" if busy.since else ""
                raise BusyError(
                    f"{busy}{since}; waited {options.lock_timeout:g} s: let it finish, or "
                    "wait longer with --lock-timeout",
                    busy.holder,
                    busy.since,
                ) from None
            await asyncio.sleep(min(LOCK_POLL, left))
    if seen.resolved:
        check_paths(options, seen.resolved)
    if seen.dest_kind not in (None, "directory"):
        what = "no such directory" if seen.dest_kind == "enoent" else f"{seen.dest_kind}"
        raise UsageError(
            f"--destination-path {dest} on {target.label}: {what}; give the directory of "
            f"the release the node runs (it was booted from {seen.info.root_dir or '?'})"
        )
    excluded = tuple(
        [n for n in seen.top if _excluded(n, excl)]
        + [f"lib/{n}" for n in seen.libs if _excluded(f"lib/{n}", excl)]
    )
    active = bool(rw) and any(p == rw or p.startswith(f"{rw}/") for p in seen.info.code_path)
    state = TargetState(
        dest=dest,
        rw=rw,
        original=seen.original,
        shadow=seen.shadow,
        shadow_active=active,
        excluded_dirs=excluded,
        local_tree=options.local_tree and not rw,
        loaded=seen.code.recorded,
        pending=seen.code.pending,
        vm_loaded=seen.code.vm_loaded,
        code_path=seen.info.code_path,
        root_dir=seen.info.root_dir,
        hash=seen.info.hash,
        otp_release=seen.info.otp_release,
    )
    check_shadow_tree(state, options)
    return state


def check_shadow_tree(state: TargetState, options: SyncOptions) -> None:
    """Refuse a ``-q`` holding files that are not a shadow tree's (say the board's ``/data``):
    relsync keeps a shadow tree a mirror of the release, and would delete them. A tree with
    relsync's marker may hold such files too (they are kept); one from before the marker is
    known by its shape: nothing in it but what relsync puts there."""
    if not state.shadow or SHADOW_MARKER in state.shadow:
        return
    foreign = sorted(foreign_entries(state))
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise UsageError(
            f"--destination-rw-path {options.rw_path} holds files that are not a relsync "
            f"shadow tree's ({', '.join(foreign[:3])}{more}): relsync would delete them; give "
            "an empty or new directory for the shadow tree, e.g. /data/relsync"
        )


async def _run_hook(target: Target, hook: Hook, function: str, options: SyncOptions) -> HookResult:
    try:
        return await target.run_hook(hook.module, function, hook.beam, options.hook_timeout)
    except TargetError as exc:  # e.g. the hook stopped the VM, and the connection with it
        raise HookError(
            f"{function} hook {hook.module}:{function}/0 lost the board while it ran (does it "
            f"stop or restart the VM?): {exc}"
        ) from exc


def _hook_failure(function: str, module: str, result: HookResult) -> str | None:
    if result.status in ("ok", "not_exported"):
        return None
    return f"{function} hook {module}:{function}/0 {result.status}: {result.detail}".rstrip(": ")


async def sync(
    target: Target,
    release: LocalRelease,
    options: SyncOptions,
    *,
    on_transfer: TransferStart | None = None,
    progress: Progress | None = None,
    state: TargetState | None = None,
) -> SyncReport:
    """Bring the target in line with ``release``; raise only for failures before any change.

    ``state`` is the target's state when it was read already (:func:`read_state`, for the
    same ``options`` and the release's ``exclude_prefixes``), e.g. while scanning the release.
    """
    started = time.perf_counter()
    try:
        if state is None:
            state = await read_state(target, release.exclude_prefixes, options)
        report = await _sync(target, release, options, state, on_transfer, progress)
    finally:
        await release_lock(target)
    report.seconds = time.perf_counter() - started
    return report


async def release_lock(target: Target) -> None:
    """Release the sync lock; a board gone meanwhile released it already."""
    with contextlib.suppress(TargetError):
        await target.unlock()


async def _sync(
    target: Target,
    release: LocalRelease,
    options: SyncOptions,
    state: TargetState,
    on_transfer: TransferStart | None,
    progress: Progress | None,
) -> SyncReport:
    if state.local_tree:  # the files are ours: the VM says which modules it runs other code of
        modules = [module_of(r) for r, f in release.files.items() if f.kind is FileKind.BEAM]
        state = replace(state, outdated=await target.outdated(modules))
    plan = build_plan(release, state)
    report = SyncReport(target.label, plan, list(release.skipped), dry_run=options.dry_run)
    report.hash = state.hash
    if options.unused_rw_path:
        report.warnings.append(
            f"{target.label} runs the release you built ({options.dest_path}) itself: there is "
            f"nothing to mirror, so the shadow tree {options.unused_rw_path} is not used (only "
            "what the build changed is reloaded)"
        )
    await check_apps_present(target, release, state.otp_release)
    if plan.reload:
        await check_beams_fit(target, release, plan, state.otp_release)
    if options.upgrade:
        report.upgrade = upgrade_steps(plan, release, state)
        report.app_specs, report.sys_config = app_data(plan, release.files, release.version)
        report.warnings += _lost_code(target, state, report)
        report.warnings += _not_started(release, state)
    applied = f"releases/{release.version}/sys.config" if report.sys_config else None
    report.warnings += [
        f"{rel} changed: the VM reads it when it boots, so it applies after a restart"
        for rel in boot_files_changed(plan)
        if rel != applied
    ]
    if options.dry_run:
        return report

    hook = options.hook
    if hook is not None:
        pre = await _run_hook(target, hook, "presync", options)
        report.hooks["presync"] = pre
        if failure := _hook_failure("presync", hook.module, pre):
            raise HookError(f"{failure}; nothing was changed on the target")

    report.warnings += await _busy_programs(target, release, options, plan)
    if plan.stale_temps:
        report.warnings.append(
            f"removing {len(plan.stale_temps)} temporary file(s) an interrupted sync left behind"
        )
    if plan.reload or plan.purge:  # so a sync killed from here on is finished by the next one
        await target.mark_pending([m for m, _, _ in plan.reload] + plan.purge)
    await stash_for_undo(target, report)
    sent = 0

    def count(nbytes: int) -> None:
        nonlocal sent
        sent += nbytes
        if progress is not None:
            progress(nbytes)

    if on_transfer is not None:
        on_transfer(plan.bytes_to_send)
    await apply_files(target, report, count, load_early=not options.upgrade)
    report.bytes_sent = sent
    await pause_point("files_replaced")

    await switch_code(target, options, report)
    await pause_point("reloaded")

    if hook is not None:
        post = await _run_hook(target, hook, "postsync", options)
        report.hooks["postsync"] = post
        if failure := _hook_failure("postsync", hook.module, post):
            report.error = failure
            report.exit_code = ExitCode.HOOK
    await _old_code_left(target, release, report)
    return report


async def _old_code_left(target: Target, release: LocalRelease, report: SyncReport) -> None:
    """Exit 6 whenever, after the sync, a process runs old code of a module of the release:
    left by this sync's loads, or by an earlier sync (a load that finds the code it writes
    already current purges nothing)."""
    ours = {module_of(r) for r, f in release.files.items() if f.kind is FileKind.BEAM}
    left = [m for m in await target.old_code() if m.module in ours]
    report.warnings += [
        f"{', '.join(m.processes)} still {'runs' if len(m.processes) == 1 else 'run'} the old "
        f"code of {m.module}"
        for m in left
    ]
    if left and report.exit_code == ExitCode.OK:
        count = sum(len(m.processes) for m in left)
        report.error = (
            f"the old code of {modules([m.module for m in left])} still runs in "
            f"{plural(count, 'process')}; see the warnings: stop those processes in a presync "
            "hook, or use --purge brutal"
        )
        report.exit_code = ExitCode.RELOAD


def _lost_code(target: Target, state: TargetState, report: SyncReport) -> list[str]:
    """Say, before an upgrade starts, which modules it cannot undo: run from the local
    release's own directory, the VM's old code was in the beams the build replaced."""
    changed = {m for m, how in state.outdated.items() if how == "changed"}
    lost = sorted(s.module for s in report.upgrade if s.module in changed)
    if not lost:
        return []
    return [
        f"{target.label} runs the release you built, and the build replaced the beams of "
        f"{', '.join(lost)}: their old code is gone, so a step that fails cannot be undone "
        "for them (they would keep the new code)"
    ]


async def stash_for_undo(target: Target, report: SyncReport) -> None:
    """Before anything changes, have the board keep the code each module of the upgrade runs
    now, so that a failing step can load it again."""
    if report.upgrade:
        await target.stash_code(
            [s.module for s in report.upgrade if s.action not in ("add_module", "apply")]
        )


async def switch_code(
    target: Target, options: SyncOptions, report: SyncReport, *, down: bool = False
) -> None:
    """Re-point the code path as ``report.plan`` says, then load and delete its modules: as
    an upgrade (``report.upgrade``; ``down`` for a rollback) or a plain reload."""
    plan = report.plan
    if plan.code_path_replace or plan.code_path_add or plan.code_path_remove:
        await target.update_code_path(
            plan.code_path_replace, plan.code_path_add, plan.code_path_remove
        )
    if report.upgrade or report.app_specs:
        await _run_upgrade(target, options, report, down=down)
    else:
        loaded = {m.module for m in report.modules}  # some while the files were written
        if reload := [r for r in plan.reload if r[0] not in loaded]:
            report.modules += await target.load_modules(reload, options.brutal_purge)
        if plan.purge:
            report.modules += await target.delete_modules(plan.purge, options.brutal_purge)
    dropped = _dropped_apps(plan)
    report.warnings += [_still_used(m, dropped.get(m.module)) for m in report.modules if _used(m)]
    if report.exit_code == ExitCode.OK and (problem := _reload_problem(report.modules)):
        report.error, report.exit_code = problem, ExitCode.RELOAD


def _reload_problem(results: list[ModuleResult]) -> str | None:
    """The one-line error of a sync whose code did not all take (exit 6), or None: modules
    that failed to load, deleted ones still in use, processes left in old code."""
    failed = [m.module for m in results if m.status == "error"]
    in_use = [m.module for m in results if m.status == "in_use"]
    stuck = [m.module for m in results if m.status == "not_purged"]
    lingering = [m for m in results if m.status == "loaded" and m.processes]
    parts = [f"{modules(failed)} failed to load"] if failed else []
    if in_use:
        parts.append(f"{modules(in_use)} no longer in the release but still in use (loaded)")
    if stuck:
        parts.append(f"{modules(stuck)} NOT reloaded (processes run the old code)")
    if lingering:
        count = sum(len(m.processes) for m in lingering)
        names = modules([m.module for m in lingering])
        parts.append(f"the old code of {names} still runs in {plural(count, 'process')}")
    if not parts:
        return None
    return "; ".join(parts) + (
        "; see the warnings: stop those processes in a presync hook, or use --purge brutal"
        if stuck or lingering or in_use
        else "; see each module's error, fix it and sync again"
    )


def _used(result: ModuleResult) -> bool:
    """Whether a deleted module was still in use: kept loaded, or unloaded by ``--purge
    brutal`` all the same."""
    return result.status == "in_use" or (result.status == "deleted" and bool(result.processes))


def _dropped_apps(plan: SyncPlan) -> dict[str, str]:
    """Module -> application, for the modules the plan deletes with their whole application
    (its ``.app`` deleted, and none of that name written)."""
    kept = {posixpath.basename(r) for r in [*plan.added, *plan.changed] if r.endswith(".app")}
    apps = {
        posixpath.dirname(posixpath.dirname(r)): name[: -len(".app")]
        for r in plan.deleted
        if (name := posixpath.basename(r)).endswith(".app")
        and r.endswith(f"/ebin/{name}")
        and name not in kept
    }
    return {
        module_of(r): app
        for r in plan.deleted
        if is_beam(r) and (app := apps.get(posixpath.dirname(posixpath.dirname(r)), ""))
    }


def _still_used(result: ModuleResult, app: str | None = None) -> str:
    """One line for a deleted module something still used (see :func:`_used`); ``app``: the
    application the release no longer has that it belongs to."""
    users = ", ".join(result.processes)
    if result.status == "deleted":
        return (
            f"{result.module} unloaded (--purge brutal) though still used by {users}: "
            "a call into it or a restart of them fails"
        )
    stop = (
        f"application {app} is no longer in the release: stop it first "
        f"(application:stop({app}) in a presync hook)"
        if app
        else "stop its users first (a supervisor's child: drop it from the supervisor and "
        "sync with --upgrade)"
    )
    return (
        f"{result.module} is no longer in the release but still used by {users}: it stays "
        f"loaded and the next sync tries again; {stop}, or unload it anyway with --purge brutal"
    )


async def _run_upgrade(
    target: Target, options: SyncOptions, report: SyncReport, *, down: bool = False
) -> None:
    """Carry out ``report.upgrade``; a refused step leaves the old code running (exit 8)."""
    result = await target.upgrade(
        report.upgrade,
        down=down,
        timeout=options.upgrade_timeout,
        brutal=options.brutal_purge,
        apps=report.app_specs,
        config=report.sys_config,
        lost_code=options.local_tree,
    )
    report.modules += result.modules
    report.events += result.events
    report.upgrade_undone = bool(result.error and result.undone)
    report.warnings += [
        f"{m.module}: {', '.join(m.processes)} still run its old code (a {m.module} loop not "
        "called by module name?)"
        for m in result.modules
        if m.status == "loaded" and m.processes
    ]
    if report.upgrade_undone:
        report.error = (
            f"upgrade undone, {target.label} runs the code it ran before: {result.error}; "
            "the files are in place, so the next sync loads them (fix it, or sync without "
            "--upgrade for a plain reload)"
        )
        report.exit_code = ExitCode.UPGRADE
    elif result.error and not (result.modules or result.events):
        report.error = (
            f"upgrade refused, {target.label} runs the code it ran before: {result.error}"
        )
        report.exit_code = ExitCode.UPGRADE
    elif result.error:
        why = {e.module: _not_undone(e.process) for e in result.events if e.what == "not_undone"}
        kept = sorted(why)
        how = (
            f"{', '.join(kept)} could not be undone and run the new code "
            f"({'; '.join(f'{m}: {why[m]}' for m in kept)})"
            if kept
            else "the new code runs"
        )
        if kept and options.local_tree:
            how = (
                f"could not be undone for {', '.join(kept)}: the build replaced the beams the "
                "VM ran, so their old code is gone (they run the new code)"
            )
        report.error = f"upgrade failed: {result.error}; {how}: fix it and sync again"
        report.exit_code = ExitCode.UPGRADE_KEPT


def _not_started(release: LocalRelease, state: TargetState) -> list[str]:
    """A warning naming the applications of the release's ``.rel`` the VM's code path has no
    directory of: --upgrade loads their modules, it does not start them."""
    if not state.code_path:
        return []
    dirs = {posixpath.basename(posixpath.dirname(p.rstrip("/"))) for p in state.code_path}
    running = {d.rpartition("-")[0] or d for d in dirs}
    new = [a for a in release_apps(release) if a not in running]
    if not new:
        return []
    return [
        f"{', '.join(new)}: new in the release's .rel, and --upgrade does not start "
        "applications (a relup would, with application:start/2): start them in a postsync "
        "hook, or restart the node"
    ]


def _not_undone(reason: str) -> str:
    """Why the board kept a module's new code, from its ``not_undone`` event."""
    if reason.startswith("{busy"):
        return "a process stayed busy past --upgrade-timeout, its state not converted back"
    if reason.startswith("{code_change"):
        return "its code_change could not convert the state back"
    if reason == "code_change_timeout":
        return "a code_change outlasted --upgrade-timeout"
    return "undoing would kill the processes still running the old code"


async def _busy_programs(
    target: Target, release: LocalRelease, options: SyncOptions, plan: SyncPlan
) -> list[str]:
    """Warnings for port programs about to be replaced while they run (after presync)."""
    ports = [r for r in plan.changed if (f := release.files.get(r)) and f.kind is FileKind.PORT]
    if not ports:
        return []
    roots = [options.dest_path.rstrip("/")] + ([plan.root] if options.rw_path else [])
    by_path = {f"{root}/{rel}": rel for rel in ports for root in roots}
    running = await target.running_programs(sorted(by_path))
    return [
        f"{by_path[p.path]} is running (OS pid {p.os_pid}, port of {p.owner}): it goes on "
        "running the old program until its owner restarts it; restart it in a hook "
        "(presync: stop, postsync: start)"
        for p in running
    ]
