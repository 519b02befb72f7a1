"""What a person and ``--json`` are told about files that went as a block delta."""

from __future__ import annotations

import io

from relsync.engine import SyncReport
from relsync.plan import SyncPlan
from relsync.report import as_dict, print_summary
from relsync.target import FilePut

BIG = "/data/relsync/lib/demo-1/priv/big.bin"


def _report(deltas: list[str], sent: int) -> SyncReport:
    plan = SyncPlan(root="/data/relsync", changed=["lib/demo-1/priv/big.bin"])
    plan.writes.append(FilePut(BIG, "/tmp/big.bin", 10_000_000, 0o644, b"h" * 32, "/srv/big"))
    return SyncReport("demo@192.0.2.7", plan, [], bytes_sent=sent, deltas=deltas)


def test_summary_and_json_name_the_block_deltas() -> None:
    out = io.StringIO()
    print_summary(_report([BIG], 16_700), out=out)
    assert "1 changed, 0 deleted; 10.0 MB to send, 16.7 kB sent (1 as block deltas)\n" in (
        out.getvalue()
    )
    assert as_dict(_report([BIG], 16_700))["delta"] == [BIG]


def test_a_whole_file_is_no_delta() -> None:
    out = io.StringIO()
    print_summary(_report([], 10_000_000), out=out)
    assert "10.0 MB to send, 10.0 MB sent\n" in out.getvalue()
    assert as_dict(_report([], 10_000_000))["delta"] == []
