"""The local release: find it, scan it, classify every file, hash what will be compared."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

from relsync.errors import UsageError
from relsync.rel_file import RelFileError, find_rel_file

#: Applications shipped with Erlang/OTP 25-27 ("system libs"); skipped unless asked for.
OTP_APPS = frozenset(
    [
        "asn1",
        "common_test",
        "compiler",
        "crypto",
        "debugger",
        "dialyzer",
        "diameter",
        "edoc",
        "eldap",
        "erl_docgen",
        "erl_interface",
        "erts",
        "et",
        "eunit",
        "ftp",
        "hipe",
        "inets",
        "jinterface",
        "kernel",
        "megaco",
        "mnesia",
        "observer",
        "odbc",
        "os_mon",
        "otp_mibs",
        "parsetools",
        "public_key",
        "reltool",
        "runtime_tools",
        "sasl",
        "snmp",
        "ssh",
        "ssl",
        "stdlib",
        "syntax_tools",
        "tftp",
        "tools",
        "wx",
        "xmerl",
    ]
)

#: Top-level release directories that relsync synchronises.
SYNCED_TOP_DIRS = ("lib", "releases", "bin")
#: Why ``erts-VSN/`` is not synced even with ``-E false``: the running VM is that runtime.
ERTS_NOT_SYNCED = "ERTS: the running VM cannot switch to another; a new ERTS needs a new image"


class FileKind(Enum):
    """What a release file is, as far as syncing it is concerned."""

    BEAM = "beam"
    APP = "app"
    PORT = "port"
    PRIV = "priv"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class LocalFile:
    """One file of the local release that takes part in the sync."""

    rel: str
    path: str
    size: int
    mode: int
    #: The content hash: SHA-256, or as :attr:`LocalRelease.hash` says.
    digest: bytes
    kind: FileKind


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file (or whole directory) left out of the sync, with the reason."""

    rel: str
    reason: str


@dataclass(slots=True)
class LocalRelease:
    """The scanned local release."""

    root: Path
    name: str
    version: str
    files: dict[str, LocalFile] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    #: Symlinks inside the release -> their text (relative to where they are).
    links: dict[str, str] = field(default_factory=dict)
    #: Relative-path prefixes the target must not scan (system libs, erts).
    exclude_prefixes: tuple[str, ...] = ()
    #: The files' digest: ``sha256``, or ``md5`` for a target without crypto.
    hash: str = "sha256"


def app_name(lib_entry: str) -> str:
    """``kernel-8.5.3`` -> ``kernel`` (an app directory name without its version)."""
    name, sep, _vsn = lib_entry.rpartition("-")
    return name if sep else lib_entry


def find_release(local_path: str | None, cwd: Path) -> Path:
    """Resolve ``--local-path``: given, else the single ``_build/*/rel/*``, else ``./_rel``."""
    if local_path:
        root = (cwd / local_path).resolve()
        _check_release_dir(root, f"--local-path {local_path}")
        return root
    built = sorted(p for p in cwd.glob("_build/*/rel/*") if (p / "releases").is_dir())
    if len(built) == 1:
        return built[0].resolve()
    if len(built) > 1:
        names = ", ".join(str(p.relative_to(cwd)) for p in built)
        raise UsageError(f"several releases found ({names}); choose one with --local-path")
    rel = cwd / "_rel"
    if rel.is_dir():
        subdirs = [p for p in rel.iterdir() if (p / "releases").is_dir()]
        root = subdirs[0] if len(subdirs) == 1 and not (rel / "releases").is_dir() else rel
        _check_release_dir(root, "./_rel")
        return root.resolve()
    raise UsageError(
        "no release found: none under _build/*/rel/ or ./_rel; build one (rebar3 release) "
        "or give its path with --local-path"
    )


def _check_release_dir(root: Path, what: str) -> None:
    if not root.is_dir():
        raise UsageError(f"{what}: no such directory; give the path of a built release")
    missing = [d for d in ("lib", "releases") if not (root / d).is_dir()]
    if missing:
        raise UsageError(
            f"{what} is not an Erlang release (no {' or '.join(missing)}/ directory); "
            "point it at the release directory, e.g. _build/prod/rel/NAME"
        )


def release_name_version(root: Path) -> tuple[str, str]:
    """The release name and version (see :func:`relsync.rel_file.find_rel_file`); for a tree
    that does not say, the last ``.rel`` file's, else the directory's name and "unknown"."""
    try:
        version, rel_file = find_rel_file(root)
    except RelFileError:
        rel_files = sorted((root / "releases").glob("*/*.rel"))
        if not rel_files:
            return root.name, "unknown"
        version, rel_file = rel_files[-1].parent.name, rel_files[-1]
    return rel_file.stem, version


def is_shared_lib(rel: str) -> bool:
    """Whether a path names a shared library (``x.so`` or ``x.so.1``), never synced."""
    name = rel.rsplit("/", 1)[-1]
    return name.endswith(".so") or ".so." in name


def sha256_file(path: str | Path) -> bytes:
    """SHA-256 of a file's content."""
    return file_digest(path, "sha256")


def file_digest(path: str | Path, algorithm: str) -> bytes:
    """A file's ``hashlib`` digest (``sha256``, or ``md5`` as a target without crypto
    computes it), read in 1 MiB blocks."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.digest()


async def hashed_as(release: LocalRelease, algorithm: str) -> LocalRelease:
    """``release`` with its files' digests as a target hashing with ``algorithm`` computes
    them (``md5`` on a board without crypto); ``release`` itself when they already are."""
    if algorithm == release.hash:
        return release
    if algorithm != "md5":
        raise UsageError(
            f"the target hashes files with {algorithm}, which this relsync does not know; "
            "update relsync"
        )
    files: dict[str, LocalFile] = {}
    for n, (rel, lf) in enumerate(release.files.items()):
        try:
            files[rel] = replace(lf, digest=file_digest(lf.path, algorithm))
        except OSError as exc:
            raise unreadable(lf.path, exc) from exc
        if n % 64 == 63:
            await asyncio.sleep(0)  # the other boards' replies are read meanwhile
    return replace(release, files=files, hash=algorithm)


def _within(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def project_of(root: Path) -> str | None:
    """The project a release was built in (the directory holding ``_build`` or ``_rel``);
    None for a release that stands alone."""
    parts = root.parts
    for marker in ("_build", "_rel"):
        if marker in parts:
            return str(Path(*parts[: parts.index(marker)]))
    return None


class _Walker:
    """Every file and symlink below a release directory, judged as the sync needs them.

    A symlink into the release stays a symlink (its text, relative to its place); one into
    the project the release was built in (rebar3 and mix dev mode) is followed; one leading
    anywhere else is refused unless ``copy_unsafe_links``. A dangling symlink is skipped,
    a loop refused; a directory or file that cannot be read stops the scan (exit 2)."""

    def __init__(self, root: Path, prune: tuple[str, ...], copy_unsafe_links: bool) -> None:
        self.cut = len(str(root)) + 1
        self.prune = prune
        self.root_real = os.path.realpath(root)
        self.project = project_of(Path(self.root_real))
        self.copy_unsafe_links = copy_unsafe_links
        self.links: dict[str, str] = {}
        self.dangling: list[Skipped] = []

    def files(self, directory: str) -> Iterator[os.DirEntry[str]]:
        """Depth first, in directory order; directories whose relative path plus ``/``
        starts with one of the prune prefixes are left out."""
        stack = [directory]
        while stack:
            current = stack.pop()
            try:
                with os.scandir(current) as listing:
                    entries = sorted(listing, key=lambda e: e.name)
            except OSError as exc:
                raise unreadable(current, exc) from exc
            subdirs: list[str] = []
            for entry in entries:
                rel = entry.path[self.cut :]
                if f"{rel}/".startswith(self.prune):
                    continue
                linked = entry.is_symlink() and not is_shared_lib(rel)  # a .so is skipped
                if linked and not self._follow(entry.path, rel):
                    continue
                if _is_dir(entry):
                    subdirs.append(entry.path)
                else:
                    yield entry
            stack += reversed(subdirs)

    def _follow(self, path: str, rel: str) -> bool:
        """Judge the symlink at ``path``: whether to walk through it as a file or directory."""
        text = os.readlink(path)
        try:
            st = os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _loop(rel, text) from exc
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                self.dangling.append(Skipped(rel, f"dangling symlink (-> {text})"))
                return False
            raise unreadable(path, exc) from exc
        real = os.path.realpath(path)
        if stat.S_ISDIR(st.st_mode) and _within(os.path.realpath(os.path.dirname(path)), real):
            raise _loop(rel, text)
        if _within(real, self.root_real):
            inside = real[len(self.root_real) + 1 :] or "."
            self.links[rel] = posixpath.relpath(inside, posixpath.dirname(rel) or ".")
            return False
        if self.copy_unsafe_links or (self.project and _within(real, self.project)):
            return True
        raise UsageError(
            f"{rel} is a symlink to {real}, outside the release; remove it, or pass "
            "--copy-unsafe-links to copy what it points to"
        )


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError as exc:
        raise unreadable(entry.path, exc) from exc


def _loop(rel: str, text: str) -> UsageError:
    return UsageError(f"{rel} is a symlink loop (-> {text}); remove it from the release")


def unreadable(path: str, exc: OSError) -> UsageError:
    """The error for a local file or directory that cannot be read."""
    return UsageError(f"cannot read {path} ({exc.strerror}); fix its permissions or rebuild")


def classify(rel: str, mode: int) -> FileKind:
    """Classify a synced file by its place in the release (an Elixir release's consolidated
    protocols, ``releases/VSN/consolidated/*.beam``, are modules too)."""
    parts = rel.split("/")
    if len(parts) == 4 and parts[0] == "releases" and parts[2] == "consolidated":
        return FileKind.BEAM if rel.endswith(".beam") else FileKind.OTHER
    if len(parts) >= 4 and parts[0] == "lib" and parts[2] == "ebin":
        if rel.endswith(".beam"):
            return FileKind.BEAM
        if rel.endswith(".app"):
            return FileKind.APP
    if len(parts) >= 4 and parts[0] == "lib" and parts[2] == "priv":
        return FileKind.PORT if mode & 0o111 else FileKind.PRIV
    return FileKind.OTHER


class HashCache:
    """SHA-256 of local files, reused while a file's size, mtime, ctime and inode stay the same.

    The ctime is there because mtimes lie: build tools copy them (relx keeps whole seconds, and
    ``--build`` moves beams' mtimes back), so a beam rewritten in place with the same size in
    the same second would otherwise look unchanged. Nothing but the kernel sets a ctime.

    Kept as one JSON file per release directory under ``$XDG_CACHE_HOME/relsync/hashes``.
    """

    def __init__(self, root: Path, cache_dir: Path | None) -> None:
        self._file: Path | None = None
        self._entries: dict[str, list[int | str]] = {}
        self._dirty = False
        if cache_dir is None:
            return
        key = hashlib.sha256(str(root).encode()).hexdigest()[:24]
        self._file = cache_dir / "hashes" / f"{key}.json"
        try:
            loaded = json.loads(self._file.read_text())
        except (OSError, ValueError):
            return
        if isinstance(loaded, dict):
            self._entries = loaded

    def sha256(self, rel: str, path: str, st: os.stat_result) -> bytes:
        """The file's hash, from the cache when its size, mtime, ctime and inode match."""
        key: list[int | str] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        hit = self._entries.get(rel)
        if hit is not None and hit[:-1] == key and isinstance(hit[-1], str):
            if not os.access(path, os.R_OK):
                raise unreadable(path, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
            return bytes.fromhex(hit[-1])
        try:
            digest = sha256_file(path)
        except OSError as exc:
            raise unreadable(path, exc) from exc
        self._entries[rel] = [*key, digest.hex()]
        self._dirty = True
        return digest

    def save(self, keep: set[str]) -> None:
        """Write the cache back (only the given paths), when anything changed."""
        if self._file is None or not (self._dirty or keep != self._entries.keys()):
            return
        entries = {rel: v for rel, v in self._entries.items() if rel in keep}
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(entries))
            tmp.replace(self._file)
        except OSError:
            pass  # a cache that cannot be written only costs time


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/relsync`` (``~/.cache/relsync``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "relsync"


#: Elixir's own applications: what -E leaves out of a mix release beside OTP's.
ELIXIR_APPS = frozenset(["eex", "elixir", "ex_unit", "iex", "logger", "mix"])


def system_lib_prefixes() -> tuple[str, ...]:
    """Relative-path prefixes of ERTS, OTP's and Elixir's libraries: by app name, not version
    (the target may carry other versions of the same libs)."""
    return ("erts-", *(f"lib/{app}-" for app in sorted(OTP_APPS | ELIXIR_APPS)))


#: A scan hands control back to the event loop after this many files.
SCAN_STEP = 256


def scan_release(
    root: Path,
    *,
    exclude_system_libs: bool = True,
    cache_dir: Path | None = None,
    copy_unsafe_links: bool = False,
) -> LocalRelease:
    """Scan and hash the release at ``root``, leaving out what must not be synced.

    With ``cache_dir``, hashes of files unchanged since the last scan are reused.
    """
    for step in _scan(root, exclude_system_libs, cache_dir, copy_unsafe_links):
        if step is not None:
            return step
    raise AssertionError("unreachable: _scan ends with the release")


async def scan_release_async(
    root: Path,
    *,
    exclude_system_libs: bool = True,
    cache_dir: Path | None = None,
    copy_unsafe_links: bool = False,
) -> LocalRelease:
    """:func:`scan_release` in steps of :data:`SCAN_STEP` files, letting the event loop run
    in between: requests issued before go out at once and their replies are read meanwhile
    (the target lists its files while we scan ours)."""
    for step in _scan(root, exclude_system_libs, cache_dir, copy_unsafe_links):
        if step is not None:
            return step
        await asyncio.sleep(0)
    raise AssertionError("unreachable: _scan ends with the release")


def _scan(
    root: Path, exclude_system_libs: bool, cache_dir: Path | None, copy_unsafe_links: bool
) -> Iterator[LocalRelease | None]:
    """The scan as steps: None now and then (time to let others run), then the release."""
    yield None
    name, version = release_name_version(root)
    cache = HashCache(root, cache_dir)
    release = LocalRelease(root=root, name=name, version=version)
    yield None
    for entry in sorted(os.listdir(root)):
        if entry.startswith("erts-"):  # never synced: see ERTS_NOT_SYNCED
            why = "ERTS (--exclude-system-libs)" if exclude_system_libs else ERTS_NOT_SYNCED
            release.skipped.append(Skipped(entry, why))
    if exclude_system_libs:
        release.exclude_prefixes = system_lib_prefixes()
        for app_dir in sorted(os.listdir(root / "lib")):
            if app_name(app_dir) in OTP_APPS:
                release.skipped.append(
                    Skipped(f"lib/{app_dir}", "OTP system lib (--exclude-system-libs)")
                )
    excluded = release.exclude_prefixes
    walker = _Walker(root, excluded, copy_unsafe_links)
    cut = walker.cut
    count = 0
    for top in SYNCED_TOP_DIRS:
        if not (root / top).is_dir():
            continue
        for found in walker.files(os.path.join(root, top)):
            count += 1
            if count % SCAN_STEP == 0:
                yield None
            path = found.path
            rel = path[cut:]
            if rel.startswith(excluded):
                continue
            if ".so" in rel and is_shared_lib(rel):
                release.skipped.append(
                    Skipped(rel, "shared library: a loaded .so cannot be replaced safely")
                )
                continue
            try:
                st = found.stat()  # follows a symlink, as os.stat(path)
            except OSError as exc:
                raise unreadable(path, exc) from exc
            if not stat.S_ISREG(st.st_mode):
                release.skipped.append(Skipped(rel, "not a regular file"))
                continue
            mode = stat.S_IMODE(st.st_mode)
            release.files[rel] = LocalFile(  # positional: measurably faster, 1000s of times
                rel, path, st.st_size, mode, cache.sha256(rel, path, st), classify(rel, mode)
            )
    release.links = walker.links
    release.skipped += walker.dangling
    cache.save(set(release.files))
    yield release
