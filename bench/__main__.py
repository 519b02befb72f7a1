"""Run every benchmark and print one table: ``python -m bench [--quick] [name ...]``.

``--quick`` runs each benchmark once with small sizes and judges no figure: the tests run it
so that a change that breaks a benchmark fails there (``tests/py/integration/test_bench.py``).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable

from bench import (
    boards_bench,
    compare_bench,
    delta_bench,
    dist_bench,
    link_bench,
    sync_bench,
    up_bench,
    watch_bench,
)
from bench.table import Row, print_table

#: name -> benchmark returning table rows (its argument: quick).
BENCHMARKS: dict[str, Callable[[bool], list[Row]]] = {
    "dist": dist_bench.run,
    "sync": sync_bench.run,
    "delta": delta_bench.run,
    "compare": compare_bench.run,
    "link": link_bench.run,
    "boards": boards_bench.run,
    "watch": watch_bench.run,
    "up": up_bench.run,
}


def run(names: list[str], quick: bool = False) -> list[Row]:
    """The rows of the named benchmarks, run one after the other (``quick``: none judged)."""
    rows: list[Row] = []
    for name in names:
        print(f"running {name} benchmark{' (quick)' if quick else ''}...", file=sys.stderr,
              flush=True)  # fmt: skip
        rows += BENCHMARKS[name](quick)
    if quick:
        rows = [dataclasses.replace(row, target="", ok=None) for row in rows]
    return rows


def main(argv: list[str]) -> int:
    """Run the named benchmarks (all by default) and print their rows."""
    quick = "--quick" in argv
    wanted = [arg for arg in argv if arg != "--quick"] or list(BENCHMARKS)
    unknown = [name for name in wanted if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    rows = run(wanted, quick)
    print_table(rows)
    return 0 if all(row.ok is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
