"""`make bench`: every benchmark on one stack, then bench/results/latest.json.

Order matters for memory: it runs first, on a fresh stack, small file before big.
Growth runs last: it fills the stack's database with 10,000 uploads and 1,000,000
events (``KINKO_BENCH_GROWTH=0`` skips it).
"""

from __future__ import annotations

import os
import time

from bench import concurrency, e2e, growth, memory, opening, plot
from bench.common import Record, bench_stack, report, table, write_results


def main() -> None:
    t0 = time.monotonic()
    records: list[Record] = []
    with bench_stack() as bench:
        for title, module in (("memory", memory), ("e2e", e2e),
                              ("concurrency", concurrency)):
            recs, details = module.run(bench)
            report(title, recs, details)
            write_results(recs)
            records += recs
        # In this process, not on the stack: opening a protected file in memory.
        recs, details = opening.run()
        report("opening", recs, details)
        write_results(recs)
        records += recs
        if os.environ.get("KINKO_BENCH_PLOT", "1") != "0":
            plot.run(bench)
        if os.environ.get("KINKO_BENCH_GROWTH", "1") != "0":
            recs, details = growth.run(bench)
            report("growth", recs, details)
            write_results(recs)
            records += recs
    print(f"\nall benchmarks ({time.monotonic() - t0:.0f} s; 2-core machine: read the ratios,"
          " not the seconds)")
    print(table(records))


if __name__ == "__main__":
    main()
