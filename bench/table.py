"""One row per measured figure, printed as an aligned text table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Row:
    """A measured figure, what it compares to, and the target it must meet (if any)."""

    bench: str
    metric: str
    ours: str
    reference: str = ""
    target: str = ""
    ok: bool | None = None


def print_table(rows: list[Row]) -> None:
    """Print ``rows`` as an aligned table on stdout."""
    header = ("bench", "metric", "ours", "reference", "target", "ok")
    cells = [header] + [
        (r.bench, r.metric, r.ours, r.reference, r.target,
         "" if r.ok is None else ("yes" if r.ok else "NO"))
        for r in rows
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
