"""A model of a board, driven through random histories: the README's promises checked after
every step.

A history starts a local board on the example release (read-only with a shadow tree, or
writable for syncs in place), then takes random steps: the local release changes (modules,
applications, priv files with odd names, symlinks, a symlink turned into a directory), and the
real ``relsync`` command line syncs it, rolls it back, or is killed at a pause point; the board
reboots. After every step the board is compared with an oracle that relsync's code does not
provide: the trees on disk (content, mode, symlink target), the code the VM runs (``code:which``
and each module's MD5 against ``beam_lib:md5`` of the file), a second sync that must do nothing,
``--status``, and the counter's state. A failure names the seed and the steps so far, so
``RELSYNC_MODEL_SEED=... pytest`` replays it.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relsync.erldist.etf import Atom, Charlist, Term
from relsync.harness.client import Run, cli_argv, run_relsync
from relsync.harness.example import APP_DIR, example_project
from relsync.harness.local import LocalBoard, host_otp_lib
from relsync.target import TEMP_PREFIX
from support.faults import kill_when_paused

#: Module pool: name -> versions compiled once (demo_counter is the release's own gen_server).
POOL_VERSIONS = {"demo_counter": 3, "mdl_a": 3, "mdl_b": 2, "extra_mod": 2}
#: Names a priv file may take: plain, spaced, unicode, the longest a file system allows,
#: not UTF-8 at all, and one that looks like relsync's own temporaries.
PRIV_NAMES = [
    "data.txt",
    "with space.txt",
    "ünï cödé.txt",
    "n" * 255,
    os.fsdecode(b"caf\xe9.bin"),
    f"{TEMP_PREFIX}mine.txt",
]
#: A relative symlink inside the release, and the directory that may take its place.
LINK = "link"
#: The priv directory the model plays in.
PRIV = f"{APP_DIR}/priv"


def _version_source(module: str, version: int) -> str:
    if module == "demo_counter":
        source = (example_project() / "src" / "demo_counter.erl").read_text()
        return source.replace("-define(VERSION, 1).", f"-define(VERSION, {version}).")
    return f"-module({module}).\n-export([v/0]).\nv() -> {version}.\n"


def compile_pool(where: Path) -> dict[tuple[str, int], Path]:
    """Every pool module at every version, compiled once: (module, version) -> beam."""
    beams: dict[tuple[str, int], Path] = {}
    for version in range(1, max(POOL_VERSIONS.values()) + 1):
        out = where / f"v{version}"
        out.mkdir(parents=True)
        sources = []
        for module, top in POOL_VERSIONS.items():
            if version <= top:
                src = out / f"{module}.erl"
                src.write_text(_version_source(module, version))
                sources.append(str(src))
                beams[(module, version)] = out / f"{module}.beam"
        subprocess.run(["erlc", "+deterministic", "-o", str(out), *sources], check=True)
    return beams


def _otp_apps() -> set[str]:
    return {p.name.rsplit("-", 1)[0] for p in host_otp_lib().iterdir()}


def synced_tree(root: Path) -> dict[str, str]:
    """What a sync is responsible for below a local release: lib/ (less OTP's own applications,
    shared libraries and dangling links), releases/, bin/; 'file:<mode>:<bytes hash>' or
    'link:<target>'."""
    otp = _otp_apps()
    out: dict[str, str] = {}
    for top in ("lib", "releases", "bin"):
        for dirpath, dirs, files in os.walk(root / top):
            rel_dir = Path(dirpath).relative_to(root)
            if rel_dir.parts[:1] == ("lib",) and len(rel_dir.parts) == 1:
                dirs[:] = [d for d in dirs if d.rsplit("-", 1)[0] not in otp]
            for name in files + [d for d in dirs if Path(dirpath, d).is_symlink()]:
                path = Path(dirpath, name)
                rel = path.relative_to(root).as_posix()
                if name.endswith(".so") or not path.exists():  # a dangling link is skipped
                    continue
                out[rel] = _entry(path)
    return out


def _entry(path: Path) -> str:
    if path.is_symlink():
        return f"link:{os.readlink(path)}"
    mode = stat.S_IMODE(path.stat().st_mode) & 0o777
    return f"file:{mode:o}:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"


def effective_tree(rw: Path, dest: Path) -> dict[str, str]:
    """The release as the VM sees it through a shadow tree: a link to the original counts as
    the original's entry; a link to an excluded directory is left out, as are what a sync never
    writes (OTP's applications, shared libraries)."""
    otp = _otp_apps()
    out: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(rw):
        for name in files + [d for d in dirs if Path(dirpath, d).is_symlink()]:
            path = Path(dirpath, name)
            rel = path.relative_to(rw).as_posix()
            parts = rel.split("/")
            if parts[0] == "lib" and len(parts) > 1 and parts[1].rsplit("-", 1)[0] in otp:
                continue
            if parts[0] not in ("lib", "releases", "bin") or name.endswith(".so"):
                continue
            if path.is_symlink() and os.readlink(path) == str(dest / rel):
                out[rel] = _entry(dest / rel)
            else:
                out[rel] = _entry(path)
    return out


def leftovers(root: Path, local: dict[str, str]) -> list[str]:
    """Names below ``root`` that look like relsync's temporaries and are not release files."""
    return sorted(
        rel
        for dirpath, dirs, files in os.walk(root)
        for name in files + dirs
        if name.startswith(TEMP_PREFIX)
        and (rel := Path(dirpath, name).relative_to(root).as_posix()) not in local
    )


@dataclass
class History:
    """One random history on one board; ``steps`` says what happened, for the failure text."""

    seed: int
    mode: str
    in_place: bool
    board: LocalBoard
    #: The release the board booted, and the local copy the steps change.
    release: Path
    local: Path
    pool: dict[tuple[str, int], Path]
    rng: random.Random
    steps: list[str] = field(default_factory=list)
    #: What the board's release held when it booted (for a read-only board, forever).
    pristine: dict[str, str] = field(default_factory=dict)
    #: Whether the VM runs the shadow tree (read-only boards).
    shadow_active: bool = False
    #: The local release as the last sync left it (what the board should hold since).
    synced: dict[str, str] = field(default_factory=dict)
    #: Whether the last step synced (so the local release and the board agree).
    fresh: bool = False
    #: demo_counter's state as the model knows it (None: unknown until asked).
    count: int = 0
    #: Figures for the soak report.
    syncs: int = 0

    # -- what the user does to the local release ---------------------------------------------

    @property
    def ebin(self) -> Path:
        return self.local / APP_DIR / "ebin"

    def _put_beam(self, module: str, ebin: Path) -> str:
        top = POOL_VERSIONS[module]
        version = self.rng.randint(1, top)
        shutil.copyfile(self.pool[(module, version)], ebin / f"{module}.beam")
        return f"{module} v{version}"

    def change_counter(self) -> str:
        return "put " + self._put_beam("demo_counter", self.ebin)

    def put_module(self) -> str:
        return "put " + self._put_beam(self.rng.choice(["mdl_a", "mdl_b"]), self.ebin)

    def delete_module(self) -> str:
        present = sorted(p for p in ("mdl_a", "mdl_b") if (self.ebin / f"{p}.beam").exists())
        if not present:
            return self.put_module()
        module = self.rng.choice(present)
        (self.ebin / f"{module}.beam").unlink()
        return f"delete {module}"

    def _extra_dir(self) -> Path | None:
        found = sorted((self.local / "lib").glob("extra-*"))
        return found[0] if found else None

    def app(self) -> str:
        """Add the extra application, bump its vsn, change its module, or remove it."""
        current = self._extra_dir()
        choice = self.rng.choice(["bump", "change", "remove"]) if current else "add"
        if choice == "remove" and current is not None:
            shutil.rmtree(current)
            return f"remove {current.name}"
        vsn = "1.0" if current is None else current.name.split("-")[1]
        if current is not None and choice == "bump":
            vsn = f"1.{int(vsn.split('.')[1]) + 1}"
            current.rename(self.local / "lib" / f"extra-{vsn}")
        target = self.local / "lib" / f"extra-{vsn}"
        target.joinpath("ebin").mkdir(parents=True, exist_ok=True)
        app = (
            f'{{application,extra,[{{vsn,"{vsn}"}},{{modules,[extra_mod]}},'
            "{applications,[kernel,stdlib]}]}.\n"
        )
        target.joinpath("ebin", "extra.app").write_text(app)
        return f"{choice} extra-{vsn}: " + self._put_beam("extra_mod", target / "ebin")

    def priv_file(self) -> str:
        """Add, change or delete a priv file (with an odd name, perhaps)."""
        name = self.rng.choice(PRIV_NAMES)
        path = self.local / PRIV / name
        if path.exists() and self.rng.random() < 0.4:
            path.unlink()
            return f"delete priv/{name!r}"
        path.write_bytes(self.rng.randbytes(self.rng.choice([0, 10, 5000])))
        path.chmod(self.rng.choice([0o644, 0o755, 0o600]))
        return f"write priv/{name!r} ({path.stat().st_mode & 0o777:o})"

    def original_file(self) -> str:
        """Delete a file the release was built with (the port program), or bring it back.
        Only where a reboot comes back on the pristine release: in place, the release would no
        longer boot (its port cannot start)."""
        path = self.local / PRIV / "demo_port"
        if self.in_place:
            return self.priv_file()
        if path.exists():
            path.unlink()
            return "delete priv/demo_port"
        shutil.copy2(self.release / PRIV / "demo_port", path)
        return "restore priv/demo_port"

    def link(self) -> str:
        """A relative symlink inside the release; or it becomes a directory, or back."""
        path = self.local / PRIV / LINK
        if path.is_symlink():
            path.unlink()
            path.mkdir()
            path.joinpath("inside.txt").write_text(str(self.rng.random()))
            return "priv/link: symlink -> directory"
        if path.is_dir():
            shutil.rmtree(path)
        target = self.rng.choice(["demo_port", "../ebin"])
        path.symlink_to(target)
        return f"priv/link -> {target}"

    # -- what the user does to the board -------------------------------------------------------

    def _args(self) -> list[str]:
        return [] if self.in_place else ["-q", str(self.board.rw_path)]

    async def relsync(self, *args: str) -> Run:
        run = await run_relsync(self.board, self.local, *self._args(), *args, mode=self.mode)
        self.syncs += 1
        return run

    async def sync(self, *extra: str) -> str:
        run = await self.relsync("--json", *extra)
        self.expect(run.code == 0, f"sync {extra} exited {run.code}: {run.err.strip()}")
        self.shadow_active = not self.in_place
        self.synced, self.fresh = synced_tree(self.local), True
        await self.converged()
        return f"sync {' '.join(extra)}".strip()

    async def rollback(self, *extra: str) -> str:
        run = await self.relsync("--rollback", "--json", *extra)
        self.expect(run.code == 0, f"rollback {extra} exited {run.code}: {run.err.strip()}")
        self.shadow_active, self.fresh = False, False
        return f"rollback {' '.join(extra)}".strip()

    async def reboot(self) -> str:
        await self.board.reboot()
        self.shadow_active, self.fresh = False, False
        self.count = 0
        return "reboot"

    async def kill(self) -> str:
        """relsync killed at a pause point; the next sync (the same command) finishes its work."""
        point = self.rng.choice(["files_replaced", "reloaded"])
        extra = self.rng.choice([[], ["--upgrade"]])
        argv = cli_argv(self.board, self.local, *self._args(), *extra, mode=self.mode)
        await kill_when_paused(argv, point)
        await self.sync(*extra)
        return f"killed {' '.join(extra)} at {point}, then the same sync".replace("  ", " ")

    async def delete_in_use(self) -> str:
        """Delete a module its supervisor still starts: the sync keeps it loaded and exits 6,
        naming it, and the board stays up; with the module back, a sync converges."""
        beam = self.ebin / "demo_fsm.beam"
        saved = beam.read_bytes()
        beam.unlink()
        run = await self.relsync("--json")
        self.expect(run.code == 6, f"deleting demo_fsm in use exited {run.code}: {run.err}")
        self.expect(
            any("demo_fsm" in w for w in run.report.get("warnings", [])),
            f"no warning names demo_fsm: {run.report.get('warnings')}",
        )
        loaded = await self.rpc("code", "is_loaded", [Atom("demo_fsm")])
        self.expect(isinstance(loaded, tuple), "demo_fsm was unloaded while its supervisor runs")
        status = await self.relsync("--status", "--json")
        pending = status.json.get("boards", [status.json])[0].get("pending")
        self.expect(pending == ["demo_fsm"], f"--status: pending {pending}, not demo_fsm")
        beam.write_bytes(saved)
        await self.sync()
        return "delete demo_fsm (in use): exit 6, kept; back, then sync"

    async def bump(self) -> str:
        value = await self.rpc("demo_counter", "bump")
        self.count += 1
        self.expect(value == self.count, f"demo_counter:bump() gave {value}, not {self.count}")
        return "bump"

    # -- the promises ------------------------------------------------------------------------

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            steps = "\n  ".join(self.steps)
            raise AssertionError(
                f"{what}\n seed {self.seed} ({self.mode}, "
                f"{'in place' if self.in_place else 'shadow tree'}), steps:\n  {steps}"
            )

    async def rpc(self, module: str, function: str, args: list[Term] | None = None) -> Term:
        return await self.board.rpc(module, function, args or [])

    async def converged(self) -> None:
        """A second sync right away does nothing at all."""
        again = await self.relsync("--json")
        r = again.report
        self.expect(again.code == 0, f"second sync exited {again.code}: {again.err.strip()}")
        did = {k: r.get(k) for k in ("added", "changed", "deleted", "written", "linked", "reload")}
        self.expect(not any(did.values()) and r.get("bytes_sent") == 0, f"second sync did {did}")

    async def check(self) -> None:
        """Every promise, against the oracle."""
        board = self.board
        dest, rw = board.release_path, board.rw_path
        if self.shadow_active:
            seen = effective_tree(rw, dest)
            root = rw
        else:
            seen = synced_tree(dest)
            root = dest
        want = self.synced if (self.shadow_active or self.in_place) else self.pristine
        diff = sorted(
            (rel, want.get(rel), seen.get(rel))
            for rel in want.keys() | seen.keys()
            if want.get(rel) != seen.get(rel)
        )
        self.expect(
            not diff,
            f"board's tree differs from the {'pristine' if want is self.pristine else 'synced'}"
            f" release: {diff[:5]}",
        )
        if not self.in_place:
            self.expect(synced_tree(dest) == self.pristine, "the read-only release changed")
        elif self.fresh:
            self._check_rsync()
        for where in (dest, rw):
            left = leftovers(where, self.synced)
            self.expect(not left, f"temporary files left in {where}: {left}")
        await self._check_code(root, seen)
        version = await self.rpc("demo_counter", "version")
        value = await self.rpc("demo_counter", "value")
        self.expect(value == self.count, f"demo_counter holds {value}, the model {self.count}")
        beam = (root / APP_DIR / "ebin" / "demo_counter.beam").read_bytes()
        pool = [v for v in range(1, 4) if self.pool[("demo_counter", v)].read_bytes() == beam]
        self.expect(
            version == (pool[0] if pool else 1), f"demo_counter's process runs version {version}"
        )
        await self._check_status()

    def _check_rsync(self) -> None:
        """rsync, asked what it would change to make the release like the local one, finds
        nothing (checksums, modes, symlinks; lib/ with deletions, less OTP's applications and
        shared libraries, which a sync leaves alone; files, not empty directories; dangling
        links are skipped, as the README says)."""
        otp = [f"--exclude=/{a}-*" for a in sorted(_otp_apps())]
        for top, extra in (("lib", ["--delete", *otp, "--exclude=*.so"]), ("releases", []),
                           ("bin", [])):  # fmt: skip
            dangling = [
                f"--exclude=/{Path(d, n).relative_to(self.local / top)}"
                for d, dirs, files in os.walk(self.local / top)
                for n in files + dirs
                if not Path(d, n).exists()
            ]
            out = subprocess.run(
                ["rsync", "-rlpcmn", "--itemize-changes", *extra, *dangling,
                 f"{self.local}/{top}/", f"{self.board.release_path}/{top}/"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            self.expect(not out.strip(), f"rsync would still change {top}/: {out.strip()[:300]}")

    async def _check_code(self, root: Path, seen: dict[str, str]) -> None:
        """Each module of the tree is loaded with the MD5 of the tree's beam; the pool's modules
        the tree lacks are not loaded. Where it was loaded from is not checked: a beam whose code
        the VM runs already (the same MD5 from another file) is not loaded again, as the README
        says, so the running module may name the file it was first loaded from."""
        beams = {
            rel.rsplit("/", 1)[1][: -len(".beam")]: rel
            for rel in seen
            if rel.endswith(".beam") and rel.split("/")[2:3] == ["ebin"]
        }
        for module, rel in sorted(beams.items()):
            loaded = await self.rpc("code", "is_loaded", [Atom(module)])
            if loaded == Atom("false") and self.in_place and not self.fresh:
                continue  # rebooted: the VM loads what its boot script names; a sync the rest
            self.expect(isinstance(loaded, tuple), f"{module} is not loaded; its beam: {rel}")
            path = f"{root}/{rel}"
            md5 = await self.rpc(module, "module_info", [Atom("md5")])
            disk = await self.rpc("beam_lib", "md5", [Charlist(path)])
            self.expect(
                isinstance(disk, tuple) and disk[1][1] == md5,  # type: ignore[index]
                f"{module} runs code other than {path}",
            )
        for module in POOL_VERSIONS:
            if module not in beams:
                loaded = await self.rpc("code", "is_loaded", [Atom(module)])
                self.expect(loaded == Atom("false"), f"{module} is loaded, the tree has no beam")

    async def _check_status(self) -> None:
        run = await self.relsync("--status", "--json")
        self.expect(run.code == 0, f"--status exited {run.code}: {run.err.strip()}")
        status: dict[str, Any] = run.json.get("boards", [run.json])[0]
        local = status.get("against_local", {})
        self.expect(
            not self.fresh or not any(local.values()), f"--status: a sync would still do {local}"
        )
        self.expect(not status.get("pending"), f"--status: pending {status.get('pending')}")
        self.expect(not status.get("old_code"), f"--status: old code {status.get('old_code')}")
        if not self.in_place:
            self.expect(
                status.get("shadow_active") == self.shadow_active,
                f"--status says shadow_active {status.get('shadow_active')}",
            )
        if self.shadow_active and self.fresh:
            against = status.get("against_pristine")
            self.expect(
                against == self._against_pristine(), f"--status against pristine: {against}"
            )

    def _against_pristine(self) -> dict[str, list[str]]:
        """The modules the synced release changed, added and deleted against the pristine one."""

        def beams(tree: dict[str, str]) -> dict[str, str]:
            return {
                r.rsplit("/", 1)[1][: -len(".beam")]: e
                for r, e in tree.items()
                if r.endswith(".beam") and r.split("/")[2:3] == ["ebin"]
            }

        now, then = beams(self.synced), beams(self.pristine)
        return {
            "changed": sorted(m for m in now.keys() & then.keys() if now[m] != then[m]),
            "added": sorted(now.keys() - then.keys()),
            "deleted": sorted(then.keys() - now.keys()),
        }


#: The steps a history draws from, with weights: (name, weight, read-only boards only).
Step = Callable[[History], Awaitable[str] | str]
CHANGES: list[tuple[Step, int]] = [
    (History.change_counter, 3),
    (History.put_module, 3),
    (History.delete_module, 2),
    (History.app, 2),
    (History.priv_file, 4),
    (History.link, 2),
    (History.original_file, 1),
]


async def _shadow_action(h: History) -> str:
    roll = h.rng.random()
    if roll < 0.45:
        return await h.sync()
    if roll < 0.6:
        return await h.sync("--upgrade")
    if roll < 0.7:
        return await h.rollback()
    if roll < 0.78:
        return await h.rollback("--clean")
    if roll < 0.86:
        return await h.reboot()
    if roll < 0.9:
        return await h.delete_in_use()
    return await h.kill()


async def _in_place_action(h: History) -> str:
    roll = h.rng.random()
    if roll < 0.6:
        return await h.sync()
    if roll < 0.75:
        return await h.sync("--upgrade")
    if roll < 0.85:
        return await h.reboot()
    if roll < 0.9:
        return await h.delete_in_use()
    return await h.kill()


async def run_history(
    seed: int, mode: str, in_place: bool, release: Path, workdir: Path, steps: int
) -> History:
    """Boot a board and take ``steps`` random steps, checking every promise after each."""
    rng = random.Random(seed)
    pool = compile_pool(workdir / "pool")
    local = workdir / "local"
    shutil.copytree(release, local, symlinks=True)
    board = await LocalBoard.start(release, workdir=workdir / "board", writable=in_place)
    try:
        if mode == "ssh":
            await board.enable_ssh()
        h = History(seed, mode, in_place, board, release, local, pool, rng)
        h.pristine = h.synced = synced_tree(board.release_path)
        action = _in_place_action if in_place else _shadow_action
        for _ in range(steps):
            changes = rng.choices(
                [c for c, _ in CHANGES], [w for _, w in CHANGES], k=rng.randint(0, 3)
            )
            for change in changes:
                h.steps.append(str(change(h)))
            if rng.random() < 0.3:
                h.steps.append(await h.bump())
            h.steps.append(await action(h))
            await h.check()
        return h
    finally:
        await board.stop()
