"""ssh mode security against a real relsyncd beside a board's release.

Host keys are checked (unknown refused unless --accept-new-host-key, a changed one always), only
the board's key logs in, and no path outside the release and rw paths can be read, written or
named through SFTP or the control channel, however it is spelt.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncssh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relsync.erldist.etf import Atom, Term, binary_to_term, term_to_binary
from relsync.harness.example import Variant, build_example_release
from relsync.harness.local import LocalBoard
from relsync.harness.relsyncd import ensure_key

pytestmark = pytest.mark.integration


class Env:
    """One board with relsyncd, an open SFTP session and a raw control channel."""

    def __init__(self, loop: asyncio.AbstractEventLoop, board: LocalBoard, outside: Path) -> None:
        self.loop, self.board, self.outside = loop, board, outside
        self.conn: asyncssh.SSHClientConnection | None = None
        self.sftp: asyncssh.SFTPClient | None = None
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.ids = iter(range(1, 1 << 30))

    def run(self, coro: object) -> object:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    async def open(self) -> None:
        assert self.board.ssh is not None
        ssh = self.board.ssh
        self.conn = await asyncssh.connect(
            "127.0.0.1", ssh.port, username=ssh.user, client_keys=[str(ssh.identity)],
            known_hosts=None, agent_path=None,
        )  # fmt: skip
        self.sftp = await self.conn.start_sftp_client()
        env = self

        class Session(asyncssh.SSHClientSession[bytes]):
            buf = b""

            def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
                self.buf += data
                while (
                    len(self.buf) >= 4 and len(self.buf) >= 4 + struct.unpack(">I", self.buf[:4])[0]
                ):
                    size = struct.unpack(">I", self.buf[:4])[0]
                    env.replies.put_nowait(self.buf[4 : 4 + size])
                    self.buf = self.buf[4 + size :]

        self.chan, _ = await self.conn.create_session(Session, subsystem="relsync", encoding=None)

    async def control(self, function: str, args: list[Term]) -> Term:
        assert self.chan is not None
        ident = next(self.ids)
        frame = term_to_binary((ident, Atom(function), args))
        self.chan.write(struct.pack(">I", len(frame)) + frame)
        reply = binary_to_term(await asyncio.wait_for(self.replies.get(), 30))
        assert isinstance(reply, tuple) and reply[0] == ident
        return reply[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    loop = asyncio.new_event_loop()
    work = tmp_path_factory.mktemp("sshsec")
    outside = work / "outside"
    outside.mkdir()
    (outside / "secret").write_text("top secret\n")
    board = loop.run_until_complete(
        LocalBoard.start(build_example_release(), workdir=work / "board")
    )
    try:
        loop.run_until_complete(board.enable_ssh())
        board.rw_path.mkdir(parents=True, exist_ok=True)
        os.symlink(outside, board.rw_path / "evil")  # a symlink escape planted on the board
        environment = Env(loop, board, outside)
        loop.run_until_complete(environment.open())
        yield environment
        assert environment.conn is not None
        environment.conn.close()
    finally:
        loop.run_until_complete(board.stop())
        loop.close()


def _outside_intact(env: Env) -> None:
    assert sorted(p.name for p in env.outside.iterdir()) == ["secret"]
    assert (env.outside / "secret").read_text() == "top secret\n"


def _escaping_paths(env: Env) -> st.SearchStrategy[str]:
    """Spellings of paths whose real location is outside the allowed paths (by construction:
    climbing 10+ levels from roots that are fewer levels deep, or through the planted link)."""
    roots = [str(env.board.release_path), str(env.board.rw_path)]
    assert all(r.count("/") < 10 for r in roots)
    targets = [str(env.outside / "secret"), "/etc/passwd", "/root", "/proc/self/environ",
               str(env.outside), "/"]  # fmt: skip
    dotdot = st.builds(
        lambda root, n, tail: f"{root}/{'../' * n}{tail.lstrip('/')}",
        st.sampled_from(roots), st.integers(min_value=10, max_value=14), st.sampled_from(targets),
    )  # fmt: skip
    noisy = st.builds(
        lambda target, sep: target.replace("/", sep), st.sampled_from(targets),
        st.sampled_from(["/", "//", "/./"]),
    )  # fmt: skip
    evil = f"{env.board.rw_path}/evil"
    via_link = st.sampled_from([f"{evil}/secret", f"{evil}/./secret", f"{evil}/x/../secret"])
    return st.one_of(dotdot, noisy, via_link)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_sftp_refuses_every_escaping_path(env: Env, data: st.DataObject) -> None:
    path = data.draw(_escaping_paths(env))
    sftp = env.sftp
    assert sftp is not None

    async def attempt() -> list[str]:
        refused = []
        for name, op in (
            ("read", lambda: sftp.open(path, "rb")),
            ("write", lambda: sftp.open(path + ".relsync-probe", "wb")),
            ("stat", lambda: sftp.stat(path)),
            ("remove", lambda: sftp.remove(path)),
            ("mkdir", lambda: sftp.mkdir(path + ".d")),
        ):
            try:
                handle = await op()
            except asyncssh.SFTPError:
                refused.append(name)
            else:
                if hasattr(handle, "close"):
                    await handle.close()
        return refused

    assert env.run(attempt()) == ["read", "write", "stat", "remove", "mkdir"], path
    _outside_intact(env)


SHA = bytes(32)

#: Each function of the control channel that takes a path: the calls that name ``p`` (a path
#: whose real location is not allowed) in each of its path positions; ``ok`` is an allowed
#: path, ``rel`` the release.
PATH_CALLS: dict[tuple[str, int], Callable[[bytes, bytes, bytes], list[list[Term]]]] = {
    ("sync_state", 3): lambda p, ok, rel: [[p, [], Atom("none")], [rel, [], p]],
    ("sync_state", 4): lambda p, ok, rel: [[p, [], Atom("none"), {}], [rel, [], p, {}]],
    ("manifest", 2): lambda p, ok, rel: [[p, {}]],
    ("list_dir", 1): lambda p, ok, rel: [[p]],
    ("put_files", 1): lambda p, ok, rel: [[[(p + b".x", 0o644, b"x", SHA)]]],
    ("put_files", 2): lambda p, ok, rel: [[[(p + b".x", 0o644, b"x", SHA)], b""]],
    ("block_signatures", 2): lambda p, ok, rel: [[p, 4096]],
    # The base a delta copies from is read: outside, it would copy bytes from anywhere.
    ("put_delta", 5): lambda p, ok, rel: [[p + b".x", rel + b"/releases/start_erl.data",
                                           [(Atom("copy"), 0, 4)], 0o644, SHA],
                                          [ok, p, [(Atom("copy"), 0, 4)], 0o644, SHA]],
    ("put_chunk", 3): lambda p, ok, rel: [[p + b".x", 0, b"x"]],
    ("put_chunk", 4): lambda p, ok, rel: [[p + b".x", 0, b"x", b""]],
    ("commit", 3): lambda p, ok, rel: [[p, 0o644, SHA]],
    ("commit", 4): lambda p, ok, rel: [[p, 0o644, SHA, b""]],
    ("delete_files", 1): lambda p, ok, rel: [[[p]]],
    ("delete_dirs", 1): lambda p, ok, rel: [[[p]]],
    ("make_symlinks", 1): lambda p, ok, rel: [[[(p + b".l", b"/")]]],
    ("update_code_path", 1): lambda p, ok, rel: [[{Atom("add"): [p]}],
                                                 [{Atom("replace_prefix"): (rel, p)}]],
    ("load_modules", 2): lambda p, ok, rel: [[[(Atom("lists"), p)], Atom("soft")]],
    ("load_fresh", 1): lambda p, ok, rel: [[[(Atom("relsync_none"), p, SHA)]]],
    ("upgrade", 2): lambda p, ok, rel: [[[(Atom("load_module"), Atom("lists"), p, b"")], {}]],
}  # fmt: skip

#: The functions that take no path, and why nothing they are given reaches the file system.
NO_PATH: dict[tuple[str, int], str] = {
    ("info", 0): "the VM's own facts",
    ("unlock", 1): "a lock token",
    ("loaded_shas", 0): "the loaded modules' hashes",
    ("code_state", 0): "the code path and loaded modules",
    ("old_code", 0): "processes running old code",
    ("mark_pending", 1): "module names",
    ("stash_code", 1): "module names",
    ("delete_modules", 2): "module names",
    ("check_beams", 1): "beam binaries, prepared and never loaded",
    ("missing_apps", 1): "application names",
    ("running_programs", 1): "compared with /proc/PID/exe of the VM's ports only",
    ("outdated", 1): "module names",
    ("suspended", 0): "the VM's suspended processes",
    ("run_hook", 3): "a module of the release, already loaded",
}


def test_every_function_of_the_channel_has_a_forbidden_case(env: Env) -> None:
    api = env.run(env.board.rpc("relsyncd_channel", "api"))
    assert isinstance(api, list)
    functions = {(str(f), a) for f, a in api}  # type: ignore[misc]
    assert not set(PATH_CALLS) & set(NO_PATH)
    assert functions - set(PATH_CALLS) - set(NO_PATH) == set(), "no forbidden-path case"
    assert set(PATH_CALLS) | set(NO_PATH) == functions, "cases for functions gone from the API"


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_control_channel_refuses_every_escaping_path(env: Env, data: st.DataObject) -> None:
    path = data.draw(_escaping_paths(env)).encode()
    ok = str(env.board.rw_path / "relsync-probe.bin").encode()
    rel = str(env.board.release_path).encode()
    for (function, _arity), calls in PATH_CALLS.items():
        for args in calls(path, ok, rel):
            result = env.run(env.control(function, args))
            assert isinstance(result, tuple) and result[0] == "error", (function, path, result)
            assert isinstance(result[1], tuple) and result[1][0] == "forbidden", (function, result)
    _outside_intact(env)
    assert not (env.board.rw_path / "relsync-probe.bin").exists()


def test_control_channel_refuses_functions_outside_the_api(env: Env) -> None:
    for function, args in (("halt", []), ("cache_owner", [1, 2]), ("os_cmd", [b"id"])):
        assert env.run(env.control(function, args)) == (Atom("error"), Atom("unknown_function"))
    assert env.run(env.control("ping", [])) == "pong"


def _relsync(env: Env, local: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    ssh = env.board.ssh
    assert ssh is not None
    shadow = env.board.rw_path / "shadow"  # not rw_path itself: the test planted a link there
    argv = [sys.executable, "-m", "relsync.cli", "-M", "ssh", "-d", "127.0.0.1",
            "-P", str(ssh.port), "-p", str(env.board.release_path), "-q", str(shadow),
            "-l", str(local), *extra]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_host_keys_unknown_then_accepted_then_changed(env: Env, tmp_path: Path) -> None:
    ssh = env.board.ssh
    assert ssh is not None
    base = build_example_release()
    known = tmp_path / "known_hosts"
    key = ["-i", str(ssh.identity), "--known-hosts", str(known)]
    unknown = _relsync(env, base, *key)
    assert unknown.returncode == 3 and "unknown host key" in unknown.stderr
    assert "--accept-new-host-key" in unknown.stderr and not known.exists()
    first = _relsync(env, base, *key, "--accept-new-host-key")
    assert first.returncode == 0, first.stderr
    recorded = known.read_text()
    assert recorded.startswith(f"[127.0.0.1]:{ssh.port} ecdsa-sha2-nistp256 ")
    again = _relsync(env, base, *key)
    assert again.returncode == 0, again.stderr
    # The board now presents another key (re-flashed, or someone in the middle).
    other = asyncssh.generate_private_key("ecdsa-sha2-nistp256").export_public_key().decode()
    known.write_text(f"[127.0.0.1]:{ssh.port} {other}")
    changed = _relsync(env, base, *key, "--accept-new-host-key")
    assert changed.returncode == 3 and "CHANGED" in changed.stderr
    assert changed.stderr.count("\n") == 1


def test_a_known_hosts_file_that_cannot_be_written_is_one_line(env: Env) -> None:
    """The key accepted but not recorded: one line, exit 2, --json's object (issue 32)."""
    ssh = env.board.ssh
    assert ssh is not None
    key = ["-i", str(ssh.identity), "--known-hosts", "/dev/null/x", "--accept-new-host-key"]
    run = _relsync(env, build_example_release(), *key, "--json")
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "/dev/null/x" in run.stderr and "--known-hosts" in run.stderr
    assert json.loads(run.stdout)["exit_code"] == 2


def test_only_the_boards_key_logs_in(env: Env, tmp_path: Path) -> None:
    stranger, _ = ensure_key(tmp_path / "stranger")
    v2 = Variant(build_example_release(), tmp_path / "v2").counter_version(2)
    run = _relsync(env, v2.root, "-i", str(stranger), "--known-hosts", str(tmp_path / "kh"),
                   "--accept-new-host-key")  # fmt: skip
    assert run.returncode == 3 and "refused our key" in run.stderr
    assert run.stderr.count("\n") == 1
    assert env.run(env.board.rpc("demo_counter", "version")) == 1
