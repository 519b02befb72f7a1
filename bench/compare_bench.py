"""relsync next to rsync on one docker-otp board, every figure measured side by side in one run.

The release is sync_bench's (a copy of this machine's OTP lib dir, ~3.4k files, ~100 MB, plus
one small app), synced with ``-E false`` in place into the board's ``/data`` volume, each tool
into its own directory from its own local copy: relsync in erl mode, relsync in ssh mode
(relsyncd), and ``rsync -a --checksum`` over OpenSSH (the board's optional sshd):

* bulk first sync: MB/s as a share of raw loopback TCP (dist_bench's measure), the peak
  RSS (ru_maxrss, through RUSAGE_SHIM) of the syncing process and its children, and the CPU
  time of that process and of the board (its container's cgroup); then the same files into a
  second directory, with every module already loaded (the transfer alone);
* no-op resync, CLI start to exit;
* one changed beam, CLI start to exit: relsync has reloaded the module, rsync only copied it.

The board runs this machine's OTP: a first sync loads every beam of the release into its VM.
It is rebooted before each relsync bulk sync, so each starts from a VM that loaded nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from bench.dist_bench import MIB, _raw_tcp_mb_s
from bench.sync_bench import QUICK_APPS, _compile_probe, _make_release, installed_env
from bench.table import Row
from relsync.harness.docker import DockerBoard, example_release
from relsync.harness.ready import run_command

ROUNDS = 5
#: Bulk first syncs per tool (each into new directories, the board rebooted before relsync's).
#: A round runs every tool once; a ratio to rsync is the median of the rounds' ratios, each
#: against the rsync run of its own round (this machine's speed drifts by half within minutes).
BULK_ROUNDS = 5
CLI_TIMEOUT_S = 300.0
BOARD_TIMEOUT_S = 180.0
TOOLS = ("relsync erl", "relsync ssh", "rsync")

#: One tool's command line for syncing a local release into a board directory: argv, env.
Command = Callable[[Path, str], tuple[list[str], dict[str, str]]]


@dataclass(frozen=True, slots=True)
class Run:
    """One command run: wall time (start to exit), CPU time and peak RSS of the process (and
    its children), its --json report's boards (the first as ``report``); the CPU time the board
    spent meanwhile, when known."""

    wall: float
    cpu: float
    max_rss_mb: float
    reports: list[dict[str, object]]
    board_cpu: float | None = None

    @property
    def report(self) -> dict[str, object]:
        """The first board's report ({} for a command that is not relsync)."""
        return self.reports[0] if self.reports else {}


#: Where a container's CPU time is accounted, cgroup v1 (ns) or v2 (usage_usec), by the
#: cgroupfs or the systemd driver ({} is the container's full id).
CPU_ACCOUNTS = (
    "/sys/fs/cgroup/cpuacct/docker/{}/cpuacct.usage",
    "/sys/fs/cgroup/cpuacct/system.slice/docker-{}.scope/cpuacct.usage",
    "/sys/fs/cgroup/docker/{}/cpu.stat",
    "/sys/fs/cgroup/system.slice/docker-{}.scope/cpu.stat",
)


def board_cpu_s(container_id: str) -> float | None:
    """CPU seconds a container has used so far, its exited processes' included; None when
    this machine accounts it elsewhere."""
    for pattern in CPU_ACCOUNTS:
        try:
            text = Path(pattern.format(container_id)).read_text()
        except OSError:
            continue
        if pattern.endswith("cpuacct.usage"):
            return int(text) / 1e9
        usage = dict(line.split() for line in text.splitlines())
        return int(usage["usage_usec"]) / 1e6
    return None


def host_otp() -> int:
    """This machine's OTP release (the boards must run the same to load its beams)."""
    out = subprocess.run(
        ["erl", "-noshell", "-eval", "io:put_chars(erlang:system_info(otp_release)), halt()."],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return int(out)


#: Runs argv (sys.argv[2:]) and writes "wall cpu maxrss_kb exit" to sys.argv[1]. A small process
#: forks the command: Linux carries the RSS peak of the process that spawned a command over
#: exec into its ru_maxrss, and this benchmark's own process is far larger than relsync's.
RUSAGE_SHIM = """
import os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(sys.argv[1], "w") as out:
    cpu = usage.ru_utime + usage.ru_stime
    out.write(f"{wall} {cpu} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def run_cli(argv: list[str], env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> Run:
    """Run ``argv`` to its exit (wall time from its fork to its exit); its stdout is parsed as
    JSON when it is a relsync report."""
    with tempfile.TemporaryDirectory(prefix="relsync-bench-run-") as tmp:
        out, err, usage = (Path(tmp) / name for name in ("out", "err", "usage"))
        with out.open("wb") as stdout, err.open("wb") as stderr:
            shim = [sys.executable, "-c", RUSAGE_SHIM, str(usage), *argv]
            proc = subprocess.Popen(shim, env=env, stdout=stdout, stderr=stderr,
                                    start_new_session=True)  # fmt: skip
            try:
                proc.wait(CLI_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        text, errors = out.read_text(errors="replace"), err.read_text(errors="replace")
        if proc.returncode != 0 or not usage.exists():
            raise RuntimeError(f"{argv[0]} ... did not finish within {CLI_TIMEOUT_S:.0f} s")
        wall, cpu, rss_kb, code = usage.read_text().split()
    if int(code) not in ok:
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed ({code}): {errors.strip()}")
    reports = json.loads(text)["boards"] if text.startswith("{") else []
    return Run(float(wall), float(cpu), int(rss_kb) / 1024, reports)


def _tools(board: DockerBoard, pycache: Path) -> dict[str, Command]:
    assert board.ssh is not None and board.openssh is not None
    # Into directories of their own beside the board's release: --force-path.
    relsync = [sys.executable, "-m", "relsync.cli", "-E", "false", "--json", "--force-path"]
    ssh, sshd = board.ssh, board.openssh
    env = installed_env(pycache)

    def erl(local: Path, dest: str) -> tuple[list[str], dict[str, str]]:
        argv = [*relsync, "-d", board.node, "--epmd-port", str(board.epmd_port)]
        return [*argv, "-p", dest, "-l", str(local)], dict(env, RELSYNC_COOKIE=board.cookie)

    def relsyncd(local: Path, dest: str) -> tuple[list[str], dict[str, str]]:
        argv = [*relsync, "-M", "ssh", "-d", "127.0.0.1", "-P", str(ssh.port), "-u", ssh.user,
                "-i", str(ssh.identity), "--known-hosts", str(ssh.known_hosts),
                "--accept-new-host-key"]  # fmt: skip
        return [*argv, "-p", dest, "-l", str(local)], env

    def rsync(local: Path, dest: str) -> tuple[list[str], dict[str, str]]:
        shell = (
            f"ssh -p {sshd.port} -i {sshd.identity} -o IdentitiesOnly=yes -o BatchMode=yes"
            f" -o UserKnownHostsFile={sshd.known_hosts} -o StrictHostKeyChecking=accept-new"
        )
        remote = f"{sshd.user}@127.0.0.1:{dest}/"
        return ["rsync", "-a", "--checksum", "-e", shell, f"{local}/", remote], dict(os.environ)

    return dict(zip(TOOLS, (erl, relsyncd, rsync), strict=True))


def _loaded(report: dict[str, object]) -> int:
    modules = report.get("modules")
    assert isinstance(modules, list)
    return sum(1 for m in modules if m["status"] == "loaded")


def _ratio(runs: list[Run], rsync: list[Run]) -> float:
    """The median of the rounds' wall-time ratios to rsync's run of the same round."""
    return statistics.median(
        ours.wall / theirs.wall for ours, theirs in zip(runs, rsync, strict=True)
    )


def _median(runs: list[Run]) -> Run:
    """The run of median wall time (its CPU, RSS and report go with it)."""
    return sorted(runs, key=lambda run: run.wall)[len(runs) // 2]


def _probe(tool: str) -> str:
    return "relsync_bench_probe_" + tool.replace("relsync ", "").replace(" ", "_")


async def _measure(work: Path, raw_mb_s: float, quick: bool) -> list[Row]:
    rounds, bulk_rounds = (1, 1) if quick else (ROUNDS, BULK_ROUNDS)
    base = work / "base"
    _make_release(base, QUICK_APPS if quick else None)
    locals_ = {tool: work / f"rel-{n}" for n, tool in enumerate(TOOLS)}
    for tool, local in locals_.items():
        shutil.copytree(base, local, symlinks=True)
        _compile_probe(local, 1, work, _probe(tool))
    nbytes = sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
    nfiles = sum(1 for p in base.rglob("*") if p.is_file())
    shutil.rmtree(base)
    otp = host_otp()
    board = await asyncio.wait_for(
        DockerBoard.start(await example_release(otp), otp=otp, workdir=work / "boards",
                          ssh=True, openssh=True),
        BOARD_TIMEOUT_S,
    )  # fmt: skip
    try:
        tools = _tools(board, work / "pycache")
        dests = {tool: f"/data/bench-{n}" for n, tool in enumerate(TOOLS)}
        container = (await run_command("docker", "inspect", "-f", "{{.Id}}", board.id)).strip()

        def sync(tool: str, dest: str | None = None) -> Run:
            argv, env = tools[tool](locals_[tool], dest or dests[tool])
            before = board_cpu_s(container)
            run = run_cli(argv, env, ok=(0,) if tool == "rsync" else (0, 6))
            after = board_cpu_s(container)
            used = None if before is None or after is None else after - before
            return replace(run, board_cpu=used)

        bulk: dict[str, list[Run]] = {tool: [] for tool in TOOLS}
        files_only: dict[str, list[Run]] = {tool: [] for tool in TOOLS if tool != "rsync"}
        for n in range(bulk_rounds):  # interleaved, each into new directories
            for tool in TOOLS:
                dest = f"{dests[tool]}-{n}"
                again = f"{dest}-again"  # the same files again, elsewhere: modules loaded
                await board.exec("mkdir", "-p", dest, again)
                if tool != "rsync":
                    await board.reboot()  # a VM that has loaded nothing yet
                bulk[tool].append(sync(tool, dest))
                if tool in files_only:
                    files_only[tool].append(sync(tool, again))
        for tool, dest in dests.items():  # the rounds below sync into the last ones
            dests[tool] = f"{dest}-{bulk_rounds - 1}"
        noop: dict[str, list[float]] = {tool: [] for tool in TOOLS}
        one: dict[str, list[float]] = {tool: [] for tool in TOOLS}
        retried: set[str] = set()  # modules whose load failed before, tried again every sync
        for _ in range(rounds):  # interleaved: the machine's load hits every tool alike
            for tool in TOOLS:
                noop[tool].append(sync(tool).wall)
        for version in range(2, 2 + rounds):
            for tool in TOOLS:
                _compile_probe(locals_[tool], version, work, _probe(tool))
                run = sync(tool)
                if tool != "rsync":
                    reload = run.report.get("reload")
                    assert isinstance(reload, list)
                    if _probe(tool) not in reload:
                        raise RuntimeError(f"{tool}: {_probe(tool)} not reloaded: {reload}")
                    retried.update(m for m in reload if m != _probe(tool))
                one[tool].append(run.wall)
    finally:
        await board.stop()

    floor = run_cli(["true"]).max_rss_mb  # what the measure itself shows for a tiny command

    def rss(mb: float) -> str:
        return f"{mb:.0f} MB" if mb > 1.2 * floor else f"<= {floor:.0f} MB (the measure's floor)"

    release = f"{nfiles} files, {nbytes / 1e6:.0f} MB"

    def board_cpu(run: Run) -> str:
        return "n/a" if run.board_cpu is None else f"{run.board_cpu:.1f} s"

    rows: list[Row] = []
    rs_bulk = _median(bulk["rsync"])
    for tool in TOOLS[:2]:
        run, alone = _median(bulk[tool]), _median(files_only[tool])
        ratio = _ratio(bulk[tool], bulk["rsync"])
        alone_ratio = _ratio(files_only[tool], bulk["rsync"])
        mb_s = nbytes / run.wall / 1e6
        loaded = _loaded(run.report)
        rows += [
            Row("compare", f"bulk first sync ({release}), {tool} (median of {bulk_rounds})",
                f"{run.wall:.2f} s = {ratio:.2f}x rsync = {mb_s:.0f} MB/s = "
                f"{mb_s / raw_mb_s:.1%} of raw TCP",
                f"raw loopback TCP {raw_mb_s:,.0f} MB/s; rsync {rs_bulk.wall:.2f} s = "
                f"{nbytes / rs_bulk.wall / 1e6:.0f} MB/s; relsync also loads {loaded} modules "
                f"and flushes every file, its CPU {run.cpu:.1f} s (the loads share the "
                "CPUs: accepted, judged on the transfer alone below)"),
            Row("compare", f"CPU time during bulk sync, {tool}: its process + the board's",
                f"{run.cpu:.1f} s + {board_cpu(run)}",
                f"rsync and its ssh {rs_bulk.cpu:.1f} s + {board_cpu(rs_bulk)}; the "
                f"{os.cpu_count()} CPUs of this machine run both sides"),
            Row("compare", f"peak RSS during bulk sync, {tool} process", rss(run.max_rss_mb),
                f"rsync + its ssh {rss(rs_bulk.max_rss_mb)}"),
            Row("compare", f"the same files into a second directory, {tool} (median of "
                f"{bulk_rounds})", f"{alone.wall:.2f} s = {alone_ratio:.2f}x rsync",
                f"no module to load ({_loaded(alone.report)} loaded): the file transfer alone "
                f"against rsync's bulk sync; CPU {alone.cpu:.1f} s + {board_cpu(alone)}",
                "<= 1.5x rsync", alone_ratio <= 1.5),
        ]  # fmt: skip
    for label, samples in (("no-op resync, CLI start to exit", noop),
                           ("one changed beam, CLI start to reloaded", one)):  # fmt: skip
        rs = statistics.median(samples["rsync"])
        note = " (copies only: cannot reload)" if samples is one else ""
        for tool in TOOLS[:2]:
            ours = statistics.median(samples[tool])
            rows.append(
                Row("compare", f"{label}, {tool} (median of {rounds})", f"{ours:.3f} s",
                    f"rsync -a --checksum over ssh {rs:.3f} s" + note)
            )  # fmt: skip
    if retried:
        rows.append(
            Row("compare", "note: modules relsync loads again on every sync",
                ", ".join(sorted(retried)),
                "their load failed on the board (gl: on_load needs libGL; exit code 6)")
        )  # fmt: skip
    return rows


def run(quick: bool = False) -> list[Row]:
    """Start one board, measure, stop it; return the table rows (``quick``: a small release,
    one round)."""
    raw = max(max(asyncio.run(_raw_tcp_mb_s([(10 if quick else 100) * MIB])))
              for _ in range(1 if quick else 3))  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="relsync-bench-compare-") as tmp:
        return asyncio.run(_measure(Path(tmp), raw, quick))
