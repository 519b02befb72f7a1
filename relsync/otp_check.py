"""Before anything is written: every beam about to be loaded must suit the board's OTP.

A beam compiled by a newer OTP than the board runs is refused by its compiler's version (such
a beam often loads, then calls what the board does not have); a beam that does not say (a
stripped one) is test-loaded on the board (``erlang:prepare_loading``, nothing loaded).
"""

from __future__ import annotations

from relsync.beam import compiler_version, otp_of_compiler
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
