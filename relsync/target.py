"""What the engine needs from a target, whatever carries it (Erlang distribution or SSH)."""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from relsync.erldist.etf import Atom, Term
from relsync.erldist.pretty import format_term


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A regular file in a target manifest."""

    rel: str
    size: int
    mode: int
    #: The content hash as the target computes it (SHA-256, or MD5 without crypto).
    digest: bytes


@dataclass(frozen=True, slots=True)
class RemoteLink:
    """A symbolic link in a target manifest (``target`` is the link text)."""

    rel: str
    target: str


RemoteEntry = RemoteFile | RemoteLink

#: Name prefix and suffix of the temporary files a write goes through before it is renamed
#: into place (see :func:`temp_path`).
TEMP_PREFIX = ".relsync-tmp."
TEMP_SUFFIX = ".part"


def temp_path(path: str, token: bytes | None, *, by_name: bool = False) -> str:
    """Where the target stages ``path`` before renaming it into place, as the helper names it
    (``relsync_files:tmp_path/2``): ``.relsync-tmp.TOKEN.MD5.part`` in the same directory
    (``.relsync-tmp.MD5.part`` without a lock's token), MD5 the name's, in upper-case hex, so
    the temporary name fits NAME_MAX however long the name is. ``by_name``: as a helper from
    before those names (an older relsyncd) stages it, ``.relsync-tmp.TOKEN.NAME.part``."""
    directory, name = posixpath.split(path)
    own = f"{token.decode()}." if token else ""
    if by_name:
        return f"{directory}/{TEMP_PREFIX}{own}{name}{TEMP_SUFFIX}"
    digest = hashlib.md5(name.encode("utf-8", "surrogateescape"), usedforsecurity=False)
    return f"{directory}/{TEMP_PREFIX}{own}{digest.hexdigest().upper()}{TEMP_SUFFIX}"


@dataclass(frozen=True, slots=True)
class TargetInfo:
    """The running VM: its OTP release, node name and code path."""

    otp_release: str
    node: str
    code_path: tuple[str, ...]
    #: ``code:root_dir()``: where the running release (or OTP) was booted from.
    root_dir: str = ""
    #: How the target hashes files: ``sha256`` (with crypto) or ``md5`` (without).
    hash: str = "sha256"
    #: The release the VM was booted from (its boot script's ``ROOT/releases/VSN``); None for
    #: a VM booted from OTP's own scripts.
    release_root: str | None = None


@dataclass(frozen=True, slots=True)
class FilePut:
    """A local file to be written at ``path`` on the target (atomically, with ``mode``).

    ``base`` is a regular file on the target similar enough to serve as the base of a block
    delta (the file being replaced, or the original beside a shadow tree); None: send it whole.
    """

    path: str
    local: str
    size: int
    mode: int
    #: What the target must find once written (its hash: SHA-256, or MD5 without crypto).
    digest: bytes
    base: str | None = None


@dataclass(frozen=True, slots=True)
class ModuleResult:
    """What happened to one module on a load or delete.

    ``status`` is one of ``loaded``, ``deleted``, ``not_loaded``, ``not_purged``, ``sticky``,
    ``in_use``, ``error``; ``processes`` names processes still running old code (``<0.90.0>
    name``), or for ``in_use`` (a deleted module kept loaded) and ``deleted`` (with ``--purge
    brutal``) what still used the module: processes, ``child ID of <0.80.0> sup``,
    ``application APP``.
    """

    module: str
    status: str
    processes: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True, slots=True)
class HookResult:
    """A hook call's outcome: ``status`` is ``ok``, ``error``, ``timeout`` or ``not_exported``."""

    status: str
    output: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CodeState:
    """Modules relsync loaded (-> SHA-256 of the beam) and modules left pending by a sync that
    did not finish (they are loaded or deleted next time, whatever the files say)."""

    recorded: dict[str, bytes]
    pending: frozenset[str]
    #: Every module the VM has loaded, when it runs in embedded mode (None: interactive mode,
    #: where a module not loaded yet loads from its file when first called).
    vm_loaded: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Readout:
    """What a sync reads from the target before it plans."""

    info: TargetInfo
    #: The release at the destination path, without the excluded prefixes.
    original: dict[str, RemoteEntry]
    #: The shadow tree at the writable path ({} without one).
    shadow: dict[str, RemoteEntry]
    code: CodeState
    #: Names in the release's directory and in its lib/ (read only with a shadow tree).
    top: list[str]
    libs: list[str]
    #: With the sync lock taken: what the destination is on the target (``directory``, a
    #: posix reason such as ``enoent``); None when not known (read without the lock).
    dest_kind: str | None = None
    #: With a shadow tree: the release's and the shadow tree's paths with every symlink
    #: resolved on the target (None: a helper from before that says nothing).
    resolved: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class RunningProgram:
    """A file that runs right now as the program of one of the VM's ports."""

    path: str
    os_pid: int
    owner: str


Progress = Callable[[int], None]

#: Called with the target paths of files once they are in place.
Written = Callable[[Sequence[str]], None]


def nothing_written(paths: Sequence[str]) -> None:
    """A :data:`Written` for a caller that does not wait for files one by one."""


@dataclass(frozen=True, slots=True)
class UpgradeStep:
    """One appup-style instruction: ``add_module``, ``load_module``, ``update`` (``change`` is
    ``supervisor``, ``advanced`` with ``extra``, or ``soft``), ``delete_module``, or ``apply``
    (``module:change(extra...)``); ``path`` and ``digest`` name the beam on the target."""

    action: str
    module: str
    path: str = ""
    digest: bytes = b""
    change: str = ""
    extra: Term = field(default_factory=list)

    def appup(self) -> str:
        """The instruction as an ``.appup`` file writes it."""
        module = format_term(Atom(self.module))
        if self.action == "update":
            extra = format_term(self.extra)
            how = f"{{advanced, {extra}}}" if self.change == "advanced" else self.change
            return f"{{update, {module}, {how}}}"
        if self.action == "apply":
            mfa = f"{module}, {format_term(Atom(self.change))}, {format_term(self.extra)}"
            return f"{{apply, {{{mfa}}}}}"
        return f"{{{self.action}, {module}}}"


@dataclass(frozen=True, slots=True)
class UpgradeEvent:
    """What an upgrade did to one process: ``suspended``, ``converted``, ``resumed``, or
    ``started_child`` (``process`` is then the child's id)."""

    what: str
    module: str
    process: str


@dataclass(frozen=True, slots=True)
class UpgradeResult:
    """An upgrade's outcome: ``error`` (one line: the step and the process that refused) is
    None when every step went through; ``undone``: the error undid every step (else the new
    code runs, and only a supervisor's child failed to start)."""

    events: list[UpgradeEvent]
    modules: list[ModuleResult]
    error: str | None = None
    undone: bool = False


class Target(Protocol):
    """The primitives a sync needs; every path is absolute on the target."""

    label: str

    async def read(
        self, dest: str, exclude: Sequence[str], rw: str | None, lock: str | None = None
    ) -> Readout:
        """The running VM, the files and symlinks below ``dest`` (not following links, minus
        the ``exclude`` prefixes) and, with a shadow tree at ``rw``, its files and the names
        in ``dest`` and ``dest/lib``; what relsync loaded into the VM, and modules an
        unfinished sync left. With ``lock`` (who we are), first take the VM's sync lock,
        held until :meth:`unlock` or the connection closes; raise
        :class:`relsync.errors.BusyError` when another sync holds it."""

    async def info(self) -> TargetInfo:
        """The running VM alone (what :meth:`read` also returns)."""

    async def unlock(self) -> None:
        """Release the sync lock :meth:`read` took (nothing when it took none)."""

    async def mark_pending(self, modules: Sequence[str]) -> None:
        """Record, before writing, the modules this sync will load or delete."""

    async def running_programs(self, paths: Sequence[str]) -> list[RunningProgram]:
        """Which of ``paths`` run now as port programs (so replacing them needs a restart)."""

    async def put_files(
        self, files: Sequence[FilePut], progress: Progress, written: Written = nothing_written
    ) -> list[str]:
        """Write each file atomically (temp name, fsync, rename), calling ``progress(nbytes)``
        with the bytes actually sent and ``written(paths)`` as files are in place; return the
        paths that went as a block delta (a file with a ``base`` may)."""

    async def make_symlinks(self, links: Sequence[tuple[str, str]]) -> None:
        """Create or atomically replace ``(link, target)`` symlinks."""

    async def delete_files(self, paths: Sequence[str]) -> None:
        """Remove files or symlinks (missing ones are fine)."""

    async def delete_dirs(self, paths: Sequence[str]) -> list[str]:
        """Remove empty directories, deepest first; return those that could not be removed."""

    async def update_code_path(
        self, replace: Sequence[tuple[str, str]], add: Sequence[str], remove: Sequence[str]
    ) -> list[str]:
        """Re-point code path entries from each ``(prefix, new prefix)`` in turn, then remove
        and add dirs."""

    async def load_modules(
        self, modules: Sequence[tuple[str, str, bytes]], brutal: bool
    ) -> list[ModuleResult]:
        """Load ``(module, beam path, digest)`` from the target's files (soft purge first)."""

    async def load_fresh(self, modules: Sequence[tuple[str, str, bytes]]) -> list[ModuleResult]:
        """Load, together, those ``(module, beam path, digest)`` the VM has no code of at all
        (while other files are still being written); their results. The rest, and any the VM
        will not load together (an ``on_load`` function), are left for :meth:`load_modules`."""

    async def delete_modules(self, modules: Sequence[str], brutal: bool) -> list[ModuleResult]:
        """Purge and delete modules."""

    async def stash_code(self, modules: Sequence[str]) -> None:
        """Keep, before the files change, the code ``modules`` run now (for an upgrade's undo)."""

    async def upgrade(
        self,
        steps: Sequence[UpgradeStep],
        *,
        down: bool,
        timeout: float,
        brutal: bool,
        apps: Sequence[str] = (),
        config: str | None = None,
        lost_code: bool = False,
    ) -> UpgradeResult:
        """Carry out ``steps`` with processes suspended and their state converted (``down``:
        ``code_change`` with ``{down, Vsn}``); a failing step undoes them all. ``apps``: the
        ``.app`` files whose specs and env replace the loaded applications' (with the
        ``config`` file's env), as release_handler does. ``lost_code``: go ahead when the
        code a module runs is no longer on disk (a failing step then leaves it on the new)."""

    async def check_beams(self, beams: Sequence[tuple[str, bytes]]) -> dict[str, str]:
        """Test-load ``(module, beam)`` without loading; the refused modules, with why."""

    async def outdated(self, modules: Sequence[str]) -> dict[str, str]:
        """Of ``modules``, those whose loaded code is not the beam they were loaded from as it
        is now, ``changed``, or that are not loaded, ``new`` (all ``changed`` for a helper
        from before)."""

    async def missing_apps(self, apps: Sequence[str]) -> list[str]:
        """Which of ``apps`` the target has neither on its code path nor in its OTP."""

    async def old_code(self) -> list[ModuleResult]:
        """Modules whose old code some process still runs (``status`` ``old_code``)."""

    async def suspended(self) -> list[str]:
        """Processes suspended right now (``<0.90.0> name``)."""

    async def run_hook(self, module: str, function: str, beam: bytes, timeout: float) -> HookResult:
        """Load the hook module from ``beam`` and run ``module:function()`` with a timeout."""

    async def close(self) -> None:
        """Disconnect."""
