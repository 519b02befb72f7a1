"""Before anything is written: every beam about to be loaded must suit the board's OTP, and
every application a slim release leaves to the board's OTP must be there.

A beam compiled by a newer OTP than the board runs is refused by its compiler's version (such
a beam often loads, then calls what the board does not have); a beam that does not say (a
stripped one) is test-loaded on the board (``erlang:prepare_loading``, nothing loaded).
"""

from __future__ import annotations

import os

from relsync.beam import compiler_version, otp_of_compiler
from relsync.erlterm import consult
from relsync.errors import UsageError
from relsync.plan import SyncPlan
from relsync.release import FileKind, LocalRelease, unreadable
from relsync.target import Target


async def check_beams_fit(
    target: Target, release: LocalRelease, plan: SyncPlan, board_otp: str
) -> None:
    """Raise a one-line UsageError naming the first module the board cannot run."""
    by_module = {
        lf.rel.rsplit("/", 1)[-1][: -len(".beam")]: lf
        for lf in release.files.values()
        if lf.kind is FileKind.BEAM
    }
    board = int(board_otp) if board_otp.isdigit() else None
    unknown: list[tuple[str, bytes]] = []
    for module, _, _ in plan.reload:
        lf = by_module[module]
        try:
            with open(lf.path, "rb") as fh:
                beam = fh.read()
        except OSError as exc:
            raise unreadable(lf.path, exc) from exc
        try:
            version = compiler_version(beam)
        except ValueError:
            version = None
        built = otp_of_compiler(version) if version else None
        if built is not None and board is not None and built > board:
            raise UsageError(
                f"{lf.rel} was compiled by OTP {built} (compiler {version}) and "
                f"{target.label} runs OTP {board}; build the release with OTP {board} "
                "(or older), e.g. in the board's own OTP image"
            )
        if version is None:
            unknown.append((module, beam))
    refused = await target.check_beams(unknown) if unknown else {}
    if refused:
        module, why = min(refused.items())
        raise UsageError(
            f"{by_module[module].rel} cannot be loaded by {target.label} (OTP {board_otp}): "
            f"{why}; build the release with the board's OTP"
        )


def release_apps(release: LocalRelease) -> list[str]:
    """The applications of the release's ``releases/VSN/*.rel`` (none when it has none)."""
    found: list[str] = []
    rel_dir = release.root / "releases" / release.version
    for rel_file in sorted(rel_dir.glob("*.rel")) if rel_dir.is_dir() else []:
        try:
            terms = consult(rel_file.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeError) as exc:
            raise UsageError(f"{rel_file} cannot be read ({exc}); rebuild the release") from None
        spec = terms[0] if terms and isinstance(terms[0], tuple) and len(terms[0]) == 4 else None
        apps = spec[3] if spec is not None and isinstance(spec[3], list) else []
        found += [str(a[0]) for a in apps if isinstance(a, tuple) and a]
    return found


async def check_apps_present(target: Target, release: LocalRelease, board_otp: str) -> None:
    """Refuse a release needing an application that neither it nor the board carries."""
    try:
        carried = {name.rpartition("-")[0] for name in os.listdir(release.root / "lib")}
    except OSError:
        carried = set()
    wanted = [a for a in release_apps(release) if a not in carried]
    missing = await target.missing_apps(wanted) if wanted else []
    if missing:
        raise UsageError(
            f"the release needs {', '.join(missing)}, which neither it nor {target.label} "
            f"(OTP {board_otp}) has; include it in the release (relx: system_libs true) or "
            "install it on the board"
        )
