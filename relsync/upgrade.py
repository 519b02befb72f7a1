"""Appup-style upgrade steps built from a sync plan, as an OTP engineer would write them.

Each module is judged from its beam (chunks that stripped production beams keep): a supervisor
is updated as one (its child specs re-read), a module with ``code_change/3`` or ``/4`` as a
process whose state is converted (``{advanced, []}``), anything else is simply reloaded. Modules
load callees first, from the beams' import tables. A user's own ``ebin/APP.appup`` with an
entry for the board's version of the application wins for the modules it names.
"""

from __future__ import annotations

import heapq
import posixpath
import re
from collections.abc import Collection, Mapping

from relsync.beam import BeamFacts, facts
from relsync.erldist.etf import Atom, Charlist, Term
from relsync.erldist.pretty import format_term
from relsync.erlterm import decode, first_term
from relsync.errors import UsageError
from relsync.plan import SyncPlan, TargetState, effective_files, module_of
from relsync.release import FileKind, LocalRelease
from relsync.target import UpgradeStep

#: A gen_server, gen_statem or gen_event handler (code_change), or a special process
#: (system_code_change, as sys calls it).
_CODE_CHANGE = (("code_change", 3), ("code_change", 4), ("system_code_change", 4))


def change_of(beam: BeamFacts) -> str:
    """``supervisor``, ``advanced`` (its processes convert their state) or ``""`` (reload)."""
    if "supervisor" in beam.behaviours:
        return "supervisor"
    if any(f in beam.exports for f in _CODE_CHANGE):
        return "advanced"
    # A stripped beam has no -behaviour: a supervisor is a module with init/1 that calls
    # the supervisor module (supervisor:start_link) and has no code_change of its own.
    if not beam.behaviours and ("init", 1) in beam.exports and "supervisor" in beam.calls:
        return "supervisor"
    return ""


def load_order(beams: Mapping[str, BeamFacts]) -> list[str]:
    """The modules, each after the ones among them it calls; a cycle is entered at its first
    module by name (nothing orders the calls within it)."""
    waits = {m: {c for c in b.calls if c in beams and c != m} for m, b in beams.items()}
    callers: dict[str, set[str]] = {m: set() for m in beams}
    for m, callees in waits.items():
        for c in callees:
            callers[c].add(m)
    ready = [m for m, callees in waits.items() if not callees]
    heapq.heapify(ready)
    order: list[str] = []
    while len(order) < len(beams):
        if not ready:  # a cycle: start it at the first module something else waits for
            m = min(c for left in beams if left not in order for c in waits[left])
            waits[m].clear()
            heapq.heappush(ready, m)
        m = heapq.heappop(ready)
        if m in order:
            continue
        order.append(m)
        for caller in sorted(callers[m]):
            waits[caller].discard(m)
            if not waits[caller] and caller not in order:
                heapq.heappush(ready, caller)
    return order


def upgrade_steps(
    plan: SyncPlan, release: LocalRelease, state: TargetState, *, down: bool = False
) -> list[UpgradeStep]:
    """The steps that bring the plan's modules in: added and changed ones in load order, then
    the deleted ones. Each module is judged from its beam in ``release`` (for a rollback,
    ``down``: the code the board runs is what was synced from there). The instructions of a
    user's appup for the version pair come after the generated ones and replace them for the
    modules they name."""
    user = appup_steps(plan, release, state, down=down)
    named = {s.module for s in user}
    steps = [s for s in generated_steps(plan, release) if s.module not in named]
    deletes = [s for s in steps if s.action == "delete_module"]
    return [s for s in steps if s.action != "delete_module"] + user + deletes


def generated_steps(plan: SyncPlan, release: LocalRelease) -> list[UpgradeStep]:
    """The steps relsync writes itself for every module of the plan."""
    local = {
        lf.rel.rsplit("/", 1)[-1][: -len(".beam")]: lf
        for lf in release.files.values()
        if lf.kind is FileKind.BEAM
    }
    beams: dict[str, BeamFacts] = {}
    targets: dict[str, tuple[str, bytes]] = {}
    for module, path, sha in plan.reload:
        targets[module] = (path, sha)
        lf = local.get(module)
        if lf is None:  # a rollback's module the local release no longer has: reloaded
            beams[module] = BeamFacts(module, frozenset(), frozenset(), frozenset())
            continue
        try:
            with open(lf.path, "rb") as fh:
                beams[module] = facts(fh.read())
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"{lf.rel} is not a readable beam file ({exc}); rebuild the release"
            ) from None
    new = set(plan.new_modules)
    steps: list[UpgradeStep] = []
    # New modules first (nothing runs them yet, and changed ones may start them), then the
    # changed ones, callees first.
    for module in sorted(load_order(beams), key=lambda m: m not in new):
        path, sha = targets[module]
        change = "" if module in new else change_of(beams[module])
        action = "add_module" if module in new else "update" if change else "load_module"
        steps.append(UpgradeStep(action, module, path, sha, change))
    steps += [UpgradeStep("delete_module", m) for m in plan.purge]
    return steps


def app_data(plan: SyncPlan, files: Collection[str], version: str) -> tuple[list[str], str | None]:
    """What release_handler gives application_controller:change_application_data/2 on an
    upgrade: the ``.app`` files (among ``files``, a release's relative paths) of the
    applications the plan changes (one it writes, or one of an application whose modules it
    loads: a killed sync may have written it already), as target paths, and the ``sys.config``
    of release ``version`` (None when it has none, or only a ``.src``)."""
    root = plan.root.rstrip("/")
    ebins = {posixpath.dirname(p[len(root) + 1 :]) for _, p, _ in plan.reload}
    rels = {f"{d}/{_app_dir(d)[0]}.app" for d in ebins} | set(plan.added + plan.changed)
    apps = sorted(
        f"{root}/{rel}"
        for rel in rels
        if rel in files and rel.endswith(f"/ebin/{_app_dir(rel)[0]}.app")
    )
    config = f"releases/{version}/sys.config"
    return apps, f"{root}/{config}" if config in files else None


_SUPPORTED = "load_module, update, add_module, delete_module and apply"


def appup_steps(
    plan: SyncPlan, release: LocalRelease, state: TargetState, *, down: bool = False
) -> list[UpgradeStep]:
    """The user's ``lib/APP-VSN/ebin/APP.appup`` instructions for the board's version of each
    application (its up entry; ``down``: the down entry back to the pristine release)."""
    there = {r: None for r in (state.original if down else effective_files(state))}
    board_vsn = {app: vsn for app, vsn in (_app_dir(rel) for rel in there) if app}
    targets = {m: (path, sha) for m, path, sha in plan.reload}
    steps: list[UpgradeStep] = []
    for rel, lf in sorted(release.files.items()):
        app, vsn = _app_dir(rel)
        if not app or rel != f"lib/{app}-{vsn}/ebin/{app}.appup" or app not in board_vsn:
            continue
        try:
            with open(lf.path, "rb") as fh:
                appup = first_term(decode(fh.read()))  # systools reads no further
        except (OSError, ValueError, UnicodeError) as exc:
            raise UsageError(f"{rel} cannot be read ({exc}); fix it or remove it") from None
        entry = _appup_entry(rel, appup, vsn, board_vsn[app], down)
        found = [s for i in entry if (s := _instruction(rel, i, targets)) is not None]
        if not down:
            _refuse_deleting_carried(rel, found, release)
        steps += found
    return steps


def _refuse_deleting_carried(rel: str, steps: list[UpgradeStep], release: LocalRelease) -> None:
    """An appup deleting a module whose beam the release still carries was written for
    another release: refused, as carrying it out would unload code the release runs."""
    beams = {module_of(r): r for r, lf in release.files.items() if lf.kind is FileKind.BEAM}
    for step in steps:
        if step.action == "delete_module" and step.module in beams:
            raise UsageError(
                f"{rel}: {step.appup()}, but the release still carries {beams[step.module]}; "
                "remove that instruction from the appup (or the module from the release)"
            )


def _app_dir(rel: str) -> tuple[str, str]:
    parts = rel.split("/")
    if len(parts) < 3 or parts[0] != "lib" or "-" not in parts[1]:
        return "", ""
    app, _, vsn = parts[1].rpartition("-")
    return app, vsn


def _appup_entry(rel: str, appup: Term, vsn: str, old: str, down: bool) -> list[Term]:
    """The instructions for ``old`` -> ``vsn`` (or back) in an appup, as systools finds them:
    the first entry whose version is ``old``, or a ``<<"regex">>`` whose first match is all of
    ``old``; [] if none. Every entry of both lists must be well formed."""
    if not isinstance(appup, tuple) or len(appup) != 3:
        raise UsageError(f"{rel} is not {{Vsn, UpFrom, DownTo}}; fix it or remove it")
    new, ups, downs = appup
    if new != vsn:
        raise UsageError(
            f"{rel} is for version {format_term(new)}, the application is {vsn}; "
            "update its first element"
        )
    found: dict[bool, list[Term]] = {}
    for is_down, entries in ((False, ups), (True, downs)):
        if not isinstance(entries, list):
            raise UsageError(
                f"{rel}: {format_term(entries, 120)} is not a list of {{Vsn, [Instruction]}}; "
                "fix it or remove it"
            )
        for entry in entries:
            if not (
                isinstance(entry, tuple)
                and len(entry) == 2
                and isinstance(entry[0], Charlist | bytes)
                and isinstance(entry[1], list)
            ):
                raise UsageError(
                    f'{rel}: {format_term(entry, 120)} is not {{"Vsn" or <<"Regex">>, '
                    "[Instruction]}; fix it or remove it"
                )
            if _matches(rel, entry[0], old) and is_down not in found:
                found[is_down] = entry[1]
    return found.get(down, [])


def _matches(rel: str, version: Charlist | bytes, old: str) -> bool:
    """``old`` is ``version``, or the first match of the regex ``version`` is all of it."""
    if isinstance(version, str):
        return version == old
    try:
        match = re.search(version.decode(), old)
    except (UnicodeDecodeError, re.error) as exc:
        raise UsageError(
            f"{rel}: {format_term(version)} is not a valid version regex ({exc}); fix it"
        ) from None
    return match is not None and match.group() == old


def _instruction(
    rel: str, term: Term, targets: Mapping[str, tuple[str, bytes]]
) -> UpgradeStep | None:
    """One appup instruction as a step; None for a module the sync does not change."""
    if not (isinstance(term, tuple) and term and isinstance(term[0], Atom)):
        raise UsageError(f"{rel}: {format_term(term)} is not an instruction; use {_SUPPORTED}")
    kind, args = str(term[0]), term[1:]
    if kind == "apply" and len(args) == 1 and isinstance(args[0], tuple) and len(args[0]) == 3:
        module, function, arguments = args[0]
        if isinstance(module, Atom) and isinstance(function, Atom) and isinstance(arguments, list):
            return UpgradeStep("apply", module, change=function, extra=arguments)
    module = args[0] if args and isinstance(args[0], Atom) else None
    if module is None or kind not in ("load_module", "update", "add_module", "delete_module"):
        raise UsageError(
            f"{rel}: relsync --upgrade carries out {_SUPPORTED}, not {format_term(term)}; "
            "write it with those, or sync without --upgrade"
        )
    if kind == "delete_module":
        return UpgradeStep("delete_module", module)
    if module not in targets:
        return None
    path, sha = targets[module]
    if kind != "update":
        return UpgradeStep(kind, module, path, sha)
    change = _change(args)
    if change == "supervisor":
        return UpgradeStep("update", module, path, sha, "supervisor")
    if isinstance(change, tuple) and len(change) == 2 and change[0] == "advanced":
        return UpgradeStep("update", module, path, sha, "advanced", change[1])
    return UpgradeStep("update", module, path, sha, "soft")


def _change(args: tuple[Term, ...]) -> Term:
    """The Change of ``{update, Mod, ...}`` by its form in appup(4), as systools_rc expands it:
    {Mod}, {Mod, supervisor | Change | DepMods}, {Mod, Change, DepMods}, {Mod, Change, Pre,
    Post, DepMods}, {Mod, Timeout, Change, Pre, Post, DepMods} and {Mod, ModType, Timeout,
    Change, Pre, Post, DepMods}."""
    at = {2: 1, 3: 1, 5: 1, 6: 2, 7: 3}.get(len(args))
    if at is None or isinstance(args[at], list):
        return "soft"
    return args[at]
