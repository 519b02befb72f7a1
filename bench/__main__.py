"""Run every benchmark and print one table: ``python -m bench [name ...]``."""

from __future__ import annotations

import sys
from collections.abc import Callable

from bench import boards_bench, compare_bench, delta_bench, dist_bench, sync_bench, watch_bench
from bench.table import Row, print_table

#: name -> benchmark returning table rows.
BENCHMARKS: dict[str, Callable[[], list[Row]]] = {
    "dist": dist_bench.run,
    "sync": sync_bench.run,
    "delta": delta_bench.run,
    "compare": compare_bench.run,
    "boards": boards_bench.run,
    "watch": watch_bench.run,
}


def main(argv: list[str]) -> int:
    """Run the named benchmarks (all by default) and print their rows."""
    wanted = argv or list(BENCHMARKS)
    unknown = [name for name in wanted if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    rows: list[Row] = []
    for name in wanted:
        print(f"running {name} benchmark...", file=sys.stderr, flush=True)
        rows += BENCHMARKS[name]()
    print_table(rows)
    return 0 if all(row.ok is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
