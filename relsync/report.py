"""Turn a :class:`~relsync.engine.SyncReport` into a one-screen summary or JSON."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from relsync.engine import SyncReport
from relsync.words import human, plural, shown, size


def _below(root: str, path: str) -> str:
    """``path`` relative to the tree ``root`` it was written in (as added/changed are)."""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix) :] if root and path.startswith(prefix) else path


def as_dict(report: SyncReport) -> dict[str, Any]:
    """A JSON-ready description of one board's sync; every path relative to ``root``."""
    plan = report.plan
    return {
        "target": report.label,
        "action": report.action,
        "hash": report.hash,
        "dry_run": report.dry_run,
        "ok": report.exit_code == 0,
        "exit_code": int(report.exit_code),
        "error": report.error,
        "root": plan.root,
        "added": plan.added,
        "changed": plan.changed,
        "deleted": plan.deleted,
        "written": [_below(plan.root, w.path) for w in plan.writes],
        "delta": [_below(plan.root, path) for path in report.deltas],
        "linked": [_below(plan.root, link) for link, _ in plan.links],
        "reload": [m for m, _, _ in plan.reload],
        "purge": plan.purge,
        "modules": [
            {
                "module": m.module,
                "status": m.status,
                "processes": list(m.processes),
                "detail": m.detail,
            }
            for m in report.modules
        ],
        "upgrade": [step.appup() for step in report.upgrade],
        "processes": [
            {"event": e.what, "module": e.module, "process": e.process} for e in report.events
        ],
        "hooks": {
            name: {"status": h.status, "output": h.output, "detail": h.detail}
            for name, h in report.hooks.items()
        },
        "skipped": [{"path": s.rel, "reason": s.reason} for s in report.skipped],
        "bytes_to_send": plan.bytes_to_send,
        "bytes_sent": report.bytes_sent,
        "seconds": round(report.seconds, 4),
        "warnings": report.warnings,
    }


def print_json(
    reports: list[SyncReport],
    out: TextIO | None = None,
    *,
    error: str | None = None,
    exit_code: int | None = None,
) -> None:
    """One JSON object on one line, the same shape for one board and many, and for a run that
    failed before reaching any (``error``, ``exit_code``): ``{"ok", "exit_code", "error",
    "boards": [...]}``; the top-level error is the first failed board's."""
    write_json([as_dict(r) for r in reports], out, error=error, exit_code=exit_code)


def write_json(
    boards: list[dict[str, Any]],
    out: TextIO | None = None,
    *,
    error: str | None = None,
    exit_code: int | None = None,
) -> None:
    """The object ``--json`` prints around its boards' (each with ``target``, ``exit_code``
    and ``error``): the highest exit code, the first failed board's error."""
    failed = [b for b in boards if b["exit_code"]]
    if exit_code is None:
        exit_code = max((b["exit_code"] for b in boards), default=0)
    if error is None and failed:
        first = failed[0]
        error = f"{first['target']}: {first['error']}" if len(boards) > 1 else first["error"]
    whole = {"ok": exit_code == 0, "exit_code": exit_code, "error": error, "boards": boards}
    (out or sys.stdout).write(json.dumps(whole) + "\n")


def _names(items: list[str], verbose: bool, limit: int = 6) -> str:
    if verbose or len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", … (+{len(items) - limit}, -v lists all)"


def print_summary(
    report: SyncReport,
    *,
    verbose: bool = False,
    out: TextIO | None = None,
    with_error: bool = True,
) -> None:
    """The one-screen human summary (on stdout unless ``out`` is given); ``with_error``: end
    with the error, when it is not on the same screen already."""
    plan = report.plan
    write = (out or sys.stdout).write

    def w(line: str) -> None:
        write(human(line))

    rollback = report.action == "rollback"
    if rollback and not plan.code_path_replace:  # see relsync.rollback
        w(
            f"relsync: nothing to roll back: {report.label} runs the release at {plan.root}, "
            "not a shadow tree\n"
        )
    else:
        verb = {
            ("sync", True): "would sync",
            ("sync", False): "synced",
            ("rollback", True): "would roll back",
            ("rollback", False): "rolled back",
        }[report.action, report.dry_run]
        took = "" if report.dry_run else f" in {report.seconds:.2f} s"
        w(f"relsync: {verb} {report.label}{took} -> {plan.root}\n")
    if not rollback:
        w(
            f"  files: {len(plan.added)} added, {len(plan.changed)} changed, "
            f"{len(plan.deleted)} deleted; {size(plan.bytes_to_send)} to send"
            + ("" if report.dry_run else f", {size(report.bytes_sent)} sent")
            + (f" ({len(report.deltas)} as block deltas)" if report.deltas else "")
            + "\n"
        )
    elif plan.delete_dirs:  # --clean
        removed = "would remove" if report.dry_run else "removed"
        count = (
            f" ({plural(len(plan.delete_paths), 'file')} and links)" if plan.delete_paths else ""
        )
        w(f"  {removed} the shadow tree{count}\n")
    for label, items in (
        ("added", plan.added),
        ("changed", plan.changed),
        ("deleted", plan.deleted),
    ):
        if items and (verbose or report.dry_run):
            w(f"    {label}: {_names(items, verbose)}\n")
    if verbose:
        how = (
            " (the board's VM cannot load crypto from its release or OTP)"
            if report.hash == "md5"
            else ""
        )
        w(f"  files compared by {report.hash}{how}\n")
    if plan.links and (verbose or report.dry_run):
        w(f"    symlinks to the original: {len(plan.links)} to create or fix\n")
    if report.dry_run:
        if plan.reload:
            w(f"  would reload: {_names([shown(m) for m, _, _ in plan.reload], verbose)}\n")
        if plan.purge:
            w(f"  would delete modules: {_names([shown(m) for m in plan.purge], verbose)}\n")
        if not plan.touches_target:
            w("  nothing to do: the target already runs this release\n")
    if report.upgrade and (report.dry_run or verbose):
        w("  upgrade instructions:\n")
        for step in report.upgrade:
            w(f"    {step.appup()}\n")
    if report.events:
        counts: dict[str, list[str]] = {}
        for event in report.events:
            counts.setdefault(event.what, []).append(event.module)
        w(
            "  processes: "
            + "; ".join(f"{len(mods)} {what}" for what, mods in counts.items())
            + "\n"
        )
        for event in report.events if verbose else []:
            w(f"    {event.what} {event.process} ({shown(event.module)})\n")
        for event in report.events:
            if event.what in ("started_child", "stopped_child"):
                how = "started its new" if event.what == "started_child" else "stopped its old"
                w(f"  {shown(event.module)} {how} child {event.process}\n")
    for status, title in (
        ("loaded", "reloaded"),
        ("deleted", "deleted modules"),
        (
            "not_purged",
            "NOT reloaded (processes still run the old code; "
            "stop them in a presync hook or use --purge brutal)",
        ),
        ("sticky", "skipped sticky (kernel/stdlib) modules"),
        ("error", "FAILED to load"),
    ):
        mods = [m for m in report.modules if m.status == status]
        if mods:
            w(f"  {title}: {_names([shown(m.module) for m in mods], verbose)}\n")
    for m in report.modules:
        if m.status == "not_purged":
            w(f"    {shown(m.module)}: {', '.join(m.processes)}\n")
        elif m.status == "error":
            w(f"    {shown(m.module)}: {m.detail}\n")
    for name, hook in report.hooks.items():
        w(f"  {name}: {hook.status}{(' ' + hook.detail) if hook.detail else ''}\n")
        for line in hook.output.rstrip("\n").splitlines() if hook.output else []:
            w(f"    | {line}\n")
    if report.skipped:
        reasons: dict[str, int] = {}
        for s in report.skipped:
            reasons[s.reason] = reasons.get(s.reason, 0) + 1
        w("  skipped: " + "; ".join(f"{n} x {r}" for r, n in reasons.items()) + "\n")
        for s in report.skipped:
            if verbose or "shared library" in s.reason:
                w(
                    f"    warning: skipped {s.rel}: {s.reason}\n"
                    if "shared" in s.reason
                    else f"    {s.rel}\n"
                )
    for warning in report.warnings:
        if not warning.startswith("nothing to roll back"):  # said on the first line
            w(f"  warning: {warning}\n")
    if report.error and with_error:
        w(f"  error: {report.error}\n")


def print_table(
    reports: list[SyncReport], *, verbose: bool = False, out: TextIO | None = None
) -> None:
    """One line a board, then each failure's message (on stdout unless ``out`` is given)."""
    stream = out or sys.stdout

    def write(text: str) -> None:
        stream.write(human(text))

    failed = [r for r in reports if r.exit_code]
    write(f"relsync: {len(reports)} boards, {len(reports) - len(failed)} synced, "
          f"{len(failed)} failed\n")  # fmt: skip
    rows = [("board", "result", "added", "changed", "deleted", "reloaded", "sent", "time")]
    for r in reports:
        loaded = sum(1 for m in r.modules if m.status == "loaded")
        result = "ok" if not r.exit_code else f"FAILED ({int(r.exit_code)})"
        rows.append((r.label, result, str(len(r.plan.added)), str(len(r.plan.changed)),
                     str(len(r.plan.deleted)), str(loaded), size(r.bytes_sent),
                     f"{r.seconds:.2f} s"))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        write("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        write("\n")
    for r in reports:
        if r.error:
            write(f"  {r.label}: {r.error}\n")
        for warning in r.warnings if verbose else []:
            write(f"  {r.label}: warning: {warning}\n")
