"""Compare the local release with what the target runs and decide every operation of a sync.

A pure function of its inputs: nothing here talks to a target.

Without a rw path the release directory itself is updated. With one, the release directory is
never written: the rw path mirrors it (changed and added files are real files, unchanged files are
symlinks to the original, deleted files are absent; excluded system-lib and ERTS directories are
one symlink each) and the VM's code path is re-pointed there.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Set
from dataclasses import dataclass, field, replace

from relsync.release import FileKind, LocalFile, LocalRelease, app_name, is_shared_lib
from relsync.target import TEMP_PREFIX, FilePut, RemoteEntry, RemoteFile, RemoteLink

#: A changed file at least this big is sent as a block delta against a copy the target has
#: (when the delta pays; see :mod:`relsync.delta`); smaller files always go whole.
DELTA_MIN = 1 << 20

#: The symlink relsync makes at the top of a shadow tree: to the release the tree mirrors.
SHADOW_MARKER = ".relsync-shadow"


#: Only files below this prefix are ever deleted (``releases/`` and ``bin/`` are never pruned,
#: so a board's boot configuration keeps what it needs).
DELETE_SCOPE = "lib/"


@dataclass(frozen=True, slots=True)
class TargetState:
    """What the target has: the release manifest, the shadow tree and what the VM runs."""

    dest: str
    rw: str | None
    original: dict[str, RemoteEntry]
    shadow: dict[str, RemoteEntry] = field(default_factory=dict)
    shadow_active: bool = False
    #: Relative paths of excluded directories present on the target (``lib/kernel-8.5``).
    excluded_dirs: tuple[str, ...] = ()
    #: Modules relsync loaded into the running VM -> SHA-256 of the beam it loaded.
    loaded: dict[str, bytes] = field(default_factory=dict)
    #: Modules an unfinished sync meant to load or delete: handled whatever the files say.
    pending: frozenset[str] = frozenset()
    #: Every module the VM has loaded, in embedded mode (None: interactive, or not told).
    vm_loaded: frozenset[str] | None = None
    #: The VM's code path, and the root it was booted from (``code:root_dir()``).
    code_path: tuple[str, ...] = ()
    root_dir: str = ""
    #: How the target hashes files (``sha256``, ``md5``): the release's digests must match.
    hash: str = "sha256"
    #: The OTP release the target runs (``"25"``).
    otp_release: str = ""
    #: ``dest`` is the local release's own directory (the VM runs the very tree relsync
    #: syncs from): there is nothing to copy, and what the VM runs is known module by module
    #: from ``outdated``: the modules whose loaded code is not their beam on disk, ``changed``,
    #: or that are not loaded at all, ``new``.
    local_tree: bool = False
    outdated: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class SyncPlan:
    """Every operation of one sync, in the order the engine performs them."""

    root: str
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    delete_paths: list[str] = field(default_factory=list)
    delete_dirs: list[str] = field(default_factory=list)
    writes: list[FilePut] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)
    #: ``(old prefix, new prefix)`` pairs re-pointing the code path at ``root``.
    code_path_replace: list[tuple[str, str]] = field(default_factory=list)
    code_path_add: list[str] = field(default_factory=list)
    code_path_remove: list[str] = field(default_factory=list)
    reload: list[tuple[str, str, bytes]] = field(default_factory=list)
    #: The modules of ``reload`` the target has no beam of (new in this release).
    new_modules: list[str] = field(default_factory=list)
    purge: list[str] = field(default_factory=list)
    #: Temporary files an interrupted sync left in the tree being written (removed).
    stale_temps: list[str] = field(default_factory=list)

    @property
    def bytes_to_send(self) -> int:
        """Total size of the files to write."""
        return sum(w.size for w in self.writes)

    @property
    def touches_target(self) -> bool:
        """Whether carrying out the plan changes anything on the target."""
        return bool(
            self.delete_paths
            or self.delete_dirs
            or self.writes
            or self.links
            or self.code_path_replace
            or self.code_path_add
            or self.code_path_remove
            or self.reload
            or self.purge
        )


def _join(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}"


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def ebin_dir(rel: str) -> str | None:
    """``lib/APP/ebin`` for a path inside an application's ebin; None otherwise."""
    parts = rel.split("/")
    if len(parts) >= 3 and parts[0] == "lib" and parts[2] == "ebin":
        return "/".join(parts[:3])
    return None


def module_of(rel: str) -> str:
    """The module a beam's path holds."""
    return posixpath.basename(rel)[: -len(".beam")]


def effective_files(state: TargetState) -> dict[str, RemoteFile]:
    """The files the running VM sees: the shadow tree when it is active, else the release."""
    original = {r: e for r, e in state.original.items() if isinstance(e, RemoteFile)}
    if not (state.rw and state.shadow_active):
        return original
    current: dict[str, RemoteFile] = {}
    for rel, entry in state.shadow.items():
        if isinstance(entry, RemoteFile):
            current[rel] = entry
        elif entry.target == _join(state.dest, rel) and rel in original:
            current[rel] = original[rel]
    return current


def _same(local: LocalFile, remote: RemoteEntry | None) -> bool:
    return (
        isinstance(remote, RemoteFile)
        and remote.digest == local.digest
        and remote.mode == local.mode
    )


def _delta_base(lf: LocalFile, candidates: list[tuple[str, RemoteEntry | None]]) -> str | None:
    """The first candidate ``(path, manifest entry)`` that is a regular file worth a delta
    against: ``lf`` is big, and the base at least half its size (a delta must copy half)."""
    if lf.size < DELTA_MIN:
        return None
    for path, entry in candidates:
        if isinstance(entry, RemoteFile) and 2 * entry.size >= lf.size:
            return path
    return None


def deletable(rel: str) -> bool:
    """Whether a sync deletes ``rel`` when the release has it no more: files under ``lib/``
    other than shared libraries (a loaded one cannot be replaced safely)."""
    return rel.startswith(DELETE_SCOPE) and not is_shared_lib(rel)


def is_temp(rel: str) -> bool:
    """Whether ``rel`` is named as relsync's temporary files are (``.relsync-tmp.*``, as this
    relsync and every earlier one names them)."""
    return posixpath.basename(rel).startswith(TEMP_PREFIX)


def foreign_entries(state: TargetState, known: Set[str] = frozenset()) -> set[str]:
    """The entries of the shadow tree at ``state.rw`` that relsync did not put there, and
    never deletes: neither the marker, a temporary file, a symlink into the release, a path
    the release has (or ``known``, the local release's), nor a path of a release's layout
    (``lib/APP/...``, ``releases/VSN/...``, ``bin/...``, ``erts-VSN/...``)."""
    dest = state.dest.rstrip("/")

    def ours(rel: str, entry: RemoteEntry) -> bool:
        if rel == SHADOW_MARKER or is_temp(rel) or rel in state.original or rel in known:
            return True
        if isinstance(entry, RemoteLink) and (entry.target + "/").startswith(f"{dest}/"):
            return True
        top, *rest = rel.split("/")
        if top in ("lib", "releases"):
            return len(rest) >= 2
        return top == "bin" or top.startswith("erts-")

    return {rel for rel, entry in state.shadow.items() if not ours(rel, entry)}


def _leftovers(entries: dict[str, RemoteEntry], release: LocalRelease) -> set[str]:
    """The temporary files an interrupted sync left among ``entries``: named as temporary
    files are, and not a file (or symlink) of the release, which may have such names too."""
    return {
        rel
        for rel in entries
        if is_temp(rel) and rel not in release.files and rel not in release.links
    }


def _without_temps(
    entries: dict[str, RemoteEntry], release: LocalRelease
) -> dict[str, RemoteEntry]:
    temps = _leftovers(entries, release)
    return {rel: entry for rel, entry in entries.items() if rel not in temps}


def build_plan(release: LocalRelease, state: TargetState) -> SyncPlan:
    """Decide what to write, link, delete and reload so the target runs ``release`` (hashed
    as the target hashes: see :func:`relsync.release.hashed_as`)."""
    if release.hash != state.hash:
        raise ValueError(f"a release hashed with {release.hash} for a {state.hash} target")
    if state.local_tree:
        return _plan_local_tree(release, state)
    root = state.rw or state.dest
    temps = sorted(_leftovers(state.shadow if state.rw else state.original, release))
    state = replace(
        state,
        original=_without_temps(state.original, release),
        shadow=_without_temps(state.shadow, release),
    )
    if state.rw:  # the original's entries in the way of a change of type are not mirrored
        blocking = _in_the_way(state.original, release)
        original = {rel: e for rel, e in state.original.items() if rel not in blocking}
        # What relsync did not put in the shadow tree is not the release's: left alone.
        foreign = foreign_entries(state, release.files.keys() | release.links.keys())
        shadow = {rel: e for rel, e in state.shadow.items() if rel not in foreign}
        state = replace(state, original=original, shadow=shadow)
    plan = SyncPlan(root=root)
    current = effective_files(state)
    local = release.files

    for rel, lf in sorted(local.items()):
        if rel not in current:
            plan.added.append(rel)
        elif not _same(lf, current[rel]):
            plan.changed.append(rel)
    seen = state.shadow if state.rw and state.shadow_active else state.original
    for rel, text in release.links.items():  # symlinks inside the release stay symlinks
        have = seen.get(rel)
        if rel not in current and have is None:
            plan.added.append(rel)
        elif not (isinstance(have, RemoteLink) and have.target == text):
            plan.changed.append(rel)
    plan.added.sort()
    plan.changed.sort()
    plan.deleted = sorted(
        rel for rel in current if rel not in local and rel not in release.links and deletable(rel)
    )

    if state.rw:
        _plan_shadow(release, state, plan)
    else:
        _plan_in_place(release, state, plan)
    _plan_code(release, state, current, plan)
    plan.stale_temps = temps
    plan.delete_paths = [_join(root, rel) for rel in temps] + plan.delete_paths
    return plan


def _in_the_way(entries: dict[str, RemoteEntry], release: LocalRelease) -> set[str]:
    """The entries standing where the release's type differs: a file or symlink where the
    release has a directory (its files or symlinks lie below), or anything below where it
    has a file or symlink. They go whatever their place, as a change of type, not a deletion:
    else writing through their path fails on every sync."""
    ours = release.files.keys() | release.links.keys()
    dirs = {d for rel in ours for d in _parents(rel)}
    return {rel for rel in entries if rel in dirs or _below(rel, ours)}


def _below(rel: str, paths: Set[str]) -> bool:
    """Whether ``rel`` lies below one of ``paths``."""
    return any(d in paths for d in _parents(rel))


def _plan_local_tree(release: LocalRelease, state: TargetState) -> SyncPlan:
    """The plan when the target runs the local release's own directory: nothing to write,
    link or delete there (its symlinks lead into the project: a write would go through them),
    only modules to load (see ``TargetState.outdated``)."""
    plan = SyncPlan(root=state.dest)
    files = {rel: RemoteFile(rel, lf.size, lf.mode, lf.digest) for rel, lf in release.files.items()}
    _plan_code(release, state, files, plan)
    return plan


def _plan_in_place(release: LocalRelease, state: TargetState, plan: SyncPlan) -> None:
    # A symlink the release has no more goes like a file (one it has a file of is replaced
    # by the file's rename; one it skipped, dangling, stays), and so does whatever is in the
    # way of a change of type.
    skipped = {s.rel for s in release.skipped}
    stale_links = {
        rel
        for rel, entry in state.original.items()
        if isinstance(entry, RemoteLink)
        and rel not in release.files
        and rel not in release.links
        and rel not in skipped
        and deletable(rel)
    }
    blocking = _in_the_way(state.original, release)
    plan.deleted = sorted(set(plan.deleted) | stale_links | blocking)
    for rel, text in sorted(release.links.items()):
        have = state.original.get(rel)
        if not (isinstance(have, RemoteLink) and have.target == text):
            plan.links.append((_join(state.dest, rel), text))
    for rel in plan.added + plan.changed:
        lf = release.files.get(rel)
        if lf is None:  # a symlink
            continue
        path = _join(state.dest, rel)
        base = _delta_base(lf, [(path, state.original.get(rel))])
        plan.writes.append(FilePut(path, lf.path, lf.size, lf.mode, lf.digest, base))
    plan.delete_paths = [_join(state.dest, rel) for rel in plan.deleted]
    if not plan.deleted:  # no file goes, so no directory empties
        return
    before = {d for rel in state.original for d in _parents(rel)}
    after = {d for rel in set(state.original) - set(plan.deleted) for d in _parents(rel)}
    after |= {d for rel in (*release.files, *release.links) for d in _parents(rel)}
    ours = release.files.keys() | release.links.keys()
    gone = sorted(
        (d for d in before - after if d.startswith(DELETE_SCOPE) or d in ours or _below(d, ours)),
        key=_depth_first,
    )
    plan.delete_dirs = [_join(state.dest, d) for d in gone]


def _depth_first(path: str) -> tuple[int, str]:
    return (-path.count("/"), path)


def _plan_shadow(release: LocalRelease, state: TargetState, plan: SyncPlan) -> None:
    assert state.rw is not None
    rw, dest = state.rw, state.dest
    desired_links: dict[str, str] = {rel: _join(dest, rel) for rel in state.excluded_dirs}
    desired_links[SHADOW_MARKER] = dest
    desired_links.update(release.links)  # relative: they resolve inside the shadow tree
    desired_files: dict[str, LocalFile] = {}
    for rel, lf in release.files.items():
        if _same(lf, state.original.get(rel)):
            desired_links[rel] = _join(dest, rel)
        else:
            desired_files[rel] = lf
    for rel, entry in state.original.items():
        # An original file the release no longer has stays deleted on every later sync,
        # whether or not this sync is the one deleting it; only what is never deleted is kept.
        known = rel in release.files or rel in release.links or deletable(rel)
        if not known and isinstance(entry, RemoteFile):
            desired_links[rel] = _join(dest, rel)

    for rel, lf in sorted(desired_files.items()):
        if not _same(lf, state.shadow.get(rel)):
            path = _join(rw, rel)
            # The shadow's own copy is the latest one sent; else the original it linked to.
            bases = [(path, state.shadow.get(rel)), (_join(dest, rel), state.original.get(rel))]
            base = _delta_base(lf, bases)
            plan.writes.append(FilePut(path, lf.path, lf.size, lf.mode, lf.digest, base))
    for rel, target in sorted(desired_links.items()):
        have = state.shadow.get(rel)
        if not (isinstance(have, RemoteLink) and have.target == target):
            plan.links.append((_join(rw, rel), target))
    wanted = desired_files.keys() | desired_links.keys()
    plan.delete_paths = [_join(rw, rel) for rel in sorted(state.shadow) if rel not in wanted]
    if not plan.delete_paths:  # every entry stays, so every directory keeps one
        return
    have_dirs = {d for rel in state.shadow for d in _parents(rel)}
    want_dirs = {d for rel in wanted for d in _parents(rel)}
    plan.delete_dirs = [_join(rw, d) for d in sorted(have_dirs - want_dirs, key=_depth_first)]


def _plan_code(
    release: LocalRelease, state: TargetState, current: dict[str, RemoteFile], plan: SyncPlan
) -> None:
    root = plan.root
    # A consolidated protocol wins over its module in lib/elixir-*: the VM runs it.
    running: dict[str, bytes] = {
        module_of(rel): f.digest
        for rel, f in sorted(current.items(), key=lambda item: is_consolidated(item[0]))
        if is_beam(rel)
    }
    if state.local_tree:  # the files are the local ones, and the VM says which it runs
        running = {m: d for m, d in running.items() if state.outdated.get(m) != "new"}
        running.update((m, b"") for m, how in state.outdated.items() if how == "changed")
    else:
        running.update(state.loaded)
    local_modules: dict[str, LocalFile] = {
        module_of(rel): lf
        for rel, lf in sorted(release.files.items(), key=lambda item: is_consolidated(item[0]))
        if lf.kind is FileKind.BEAM
    }
    # Protocols load after their implementations, so dispatch finds every impl it names.
    for module, lf in sorted(
        local_modules.items(), key=lambda m: (is_consolidated(m[1].rel), m[0])
    ):
        unloaded = state.vm_loaded is not None and module not in state.vm_loaded
        if module in state.pending or unloaded or running.get(module) != lf.digest:
            plan.reload.append((module, _join(root, lf.rel), lf.digest))
            if module not in running:
                plan.new_modules.append(module)
    gone = {module_of(rel) for rel in plan.deleted if is_beam(rel)} | state.pending
    if state.local_tree:  # no file is deleted there: the build dropped what relsync loaded
        gone |= state.loaded.keys()
    plan.purge = sorted(gone - local_modules.keys())

    local_ebins = {d for rel in release.files if (d := ebin_dir(rel))}
    current_ebins = {d for rel in current if (d := ebin_dir(rel))}
    stale = _stale_trees(release, state, root)
    if state.rw and not state.shadow_active and state.dest not in stale:
        stale.insert(0, state.dest)
    plan.code_path_replace = [(tree, root) for tree in stale]
    plan.code_path_add = [_join(root, d) for d in sorted(local_ebins - current_ebins)]
    plan.code_path_remove = [_join(root, d) for d in sorted(current_ebins - local_ebins)]


def _stale_trees(release: LocalRelease, state: TargetState, root: str) -> list[str]:
    """Trees the VM loads this release's own applications from that are neither ``root``, the
    release itself nor the VM's boot root: a shadow tree of an earlier ``-q``, say. Their code
    path entries move to ``root``."""
    apps = {app_name(rel.split("/")[1]) for rel in release.files if rel.startswith("lib/")}
    keep = {root.rstrip("/"), state.dest.rstrip("/"), state.root_dir.rstrip("/")}
    trees: list[str] = []
    for entry in state.code_path:
        parts = entry.rstrip("/").rsplit("/", 3)
        if len(parts) < 4 or (parts[1], parts[3]) != ("lib", "ebin"):
            continue
        tree = parts[0]
        if app_name(parts[2]) in apps and tree not in keep and tree not in trees:
            trees.append(tree)
    return trees


def is_beam(rel: str) -> bool:
    """Whether ``rel`` is a module the VM loads: in an application's ebin, or one of an
    Elixir release's consolidated protocols."""
    return rel.endswith(".beam") and (ebin_dir(rel) is not None or is_consolidated(rel))


def is_consolidated(rel: str) -> bool:
    """Whether ``rel`` is a consolidated protocol (``releases/VSN/consolidated/M.beam``),
    which the VM runs instead of the protocol module in ``lib/elixir-*``."""
    parts = rel.split("/")
    return len(parts) == 4 and parts[0] == "releases" and parts[2] == "consolidated"


#: Files the VM reads only when it boots (relx, mix): a sync cannot apply them to a running VM.
_BOOT_FILE = re.compile(
    r"releases/(COOKIE|[^/]+/(sys\.config(\.src)?|vm\.args(\.src)?|runtime\.exs|env\.sh))"
)


def boot_files_changed(plan: SyncPlan) -> list[str]:
    """The added or changed files of ``plan`` that only a restart applies (sys.config,
    vm.args, runtime.exs, env.sh, a mix release's COOKIE)."""
    return sorted(rel for rel in [*plan.added, *plan.changed] if _BOOT_FILE.fullmatch(rel))
