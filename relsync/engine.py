"""One sync, in order: read the target -> plan -> presync -> transfer -> code path -> reload ->
postsync. The engine only sequences; the plan decides and the target carries it out."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from relsync.errors import ExitCode, HookError
from relsync.plan import SyncPlan, TargetState, build_plan
from relsync.release import FileKind, LocalRelease, Skipped
from relsync.target import HookResult, ModuleResult, Progress, Target

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


@dataclass(slots=True)
class SyncReport:
    """Everything a person (or ``--json``) needs to know about one sync."""

    label: str
    plan: SyncPlan
    skipped: list[Skipped]
    dry_run: bool = False
    modules: list[ModuleResult] = field(default_factory=list)
    hooks: dict[str, HookResult] = field(default_factory=dict)
    bytes_sent: int = 0
    #: Target paths of the files that went as a block delta (see ``plan.writes``).
    deltas: list[str] = field(default_factory=list)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    exit_code: ExitCode = ExitCode.OK


#: Called with the total number of bytes to send before the transfer starts.
TransferStart = Callable[[int], None]


def _excluded(rel: str, prefixes: tuple[str, ...]) -> bool:
    return rel.startswith(prefixes)


async def read_state(target: Target, excl: tuple[str, ...], options: SyncOptions) -> TargetState:
    """Ask the target for everything the plan needs. Only the release's ``exclude_prefixes``
    are needed, so it may run while the release is still being scanned."""
    dest, rw = options.dest_path.rstrip("/"), (options.rw_path or "").rstrip("/") or None
    seen = await target.read(dest, excl, rw)
    excluded = tuple(
        [n for n in seen.top if _excluded(n, excl)]
        + [f"lib/{n}" for n in seen.libs if _excluded(f"lib/{n}", excl)]
    )
    active = bool(rw) and any(p == rw or p.startswith(f"{rw}/") for p in seen.info.code_path)
    return TargetState(
        dest=dest,
        rw=rw,
        original=seen.original,
        shadow=seen.shadow,
        shadow_active=active,
        excluded_dirs=excluded,
        loaded=seen.code.recorded,
        pending=seen.code.pending,
    )


async def _run_hook(target: Target, hook: Hook, function: str, options: SyncOptions) -> HookResult:
    return await target.run_hook(hook.module, function, hook.beam, options.hook_timeout)


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
    if state is None:
        state = await read_state(target, release.exclude_prefixes, options)
    plan = build_plan(release, state)
    report = SyncReport(target.label, plan, list(release.skipped), dry_run=options.dry_run)
    if options.dry_run:
        report.seconds = time.perf_counter() - started
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
    sent = 0

    def count(nbytes: int) -> None:
        nonlocal sent
        sent += nbytes
        if progress is not None:
            progress(nbytes)

    if on_transfer is not None:
        on_transfer(plan.bytes_to_send)
    await _apply_files(target, plan, report, count)
    report.bytes_sent = sent

    if plan.code_path_replace or plan.code_path_add or plan.code_path_remove:
        await target.update_code_path(
            plan.code_path_replace, plan.code_path_add, plan.code_path_remove
        )
    if plan.reload:
        report.modules += await target.load_modules(plan.reload, options.brutal_purge)
    if plan.purge:
        report.modules += await target.delete_modules(plan.purge, options.brutal_purge)
    if any(m.status in ("not_purged", "error") for m in report.modules):
        report.exit_code = ExitCode.RELOAD

    if hook is not None:
        post = await _run_hook(target, hook, "postsync", options)
        report.hooks["postsync"] = post
        if failure := _hook_failure("postsync", hook.module, post):
            report.error = failure
            report.exit_code = ExitCode.HOOK
    report.seconds = time.perf_counter() - started
    return report


async def _busy_programs(
    target: Target, release: LocalRelease, options: SyncOptions, plan: SyncPlan
) -> list[str]:
    """Warnings for port programs about to be replaced while they run (after presync)."""
    ports = [r for r in plan.changed if release.files[r].kind is FileKind.PORT]
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


async def _apply_files(target: Target, plan: SyncPlan, report: SyncReport, count: Progress) -> None:
    # Deletions first: a symlink or file that must give way to a directory (or the other way
    # round) is gone before anything is written through its path.
    if plan.delete_paths:
        await target.delete_files(plan.delete_paths)
    if plan.delete_dirs:
        stuck = await target.delete_dirs(plan.delete_dirs)
        report.warnings += [f"directory not empty, left in place: {d}" for d in stuck]
    if plan.writes:
        report.deltas = sorted(await target.put_files(plan.writes, count))
    if plan.links:
        await target.make_symlinks(plan.links)
