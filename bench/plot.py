"""Throughput (MiB/s) against file size for the chain (upload until ``vaulted``) and
its two references (raw HTTPS upload to the minimal sink; clamd INSTREAM alone), for
the digits-heavy CSV.  Writes docs/performance.png and bench/results/plot.json.

Knob: ``KINKO_BENCH_PLOT_SIZES`` (MiB, default ``1,8,32,100``).
"""

from __future__ import annotations

import json
from typing import Any

from bench.common import (
    ROOT,
    Bench,
    MiB,
    Payload,
    bench_stack,
    env_sizes,
)

PNG = ROOT / "docs" / "performance.png"
DATA = ROOT / "bench" / "results" / "plot.json"


def measure(bench: Bench) -> dict[str, Any]:
    sizes = env_sizes("KINKO_BENCH_PLOT_SIZES", "1,8,32,100")
    series: dict[str, list[float]] = {"chain": [], "sink": [], "clamd": [],
                                      "sink+clamd": []}
    for size_mb in sizes:
        payload, twin = Payload("csv", size_mb * MiB), Payload("csv", size_mb * MiB)
        sink = bench.time_sink(payload)
        clamd = bench.time_clamd(twin)  # a twin: clamd caches verdicts of seen bytes
        chain = bench.time_chain(payload)["total"]
        for name, t in (("chain", chain), ("sink", sink), ("clamd", clamd),
                        ("sink+clamd", sink + clamd)):
            series[name].append(size_mb / t)
        print(f"plot: {size_mb:>5} MiB  chain {size_mb / chain:7.1f}  sink "
              f"{size_mb / sink:7.1f}  clamd {size_mb / clamd:7.1f} MiB/s", flush=True)
    return {"sizes_mib": sizes, "mib_per_s": series}


def draw(data: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    styles = {"chain": ("o-", "upload → vaulted (kinko)"),
              "sink": ("s--", "reference: HTTPS upload to a minimal sink"),
              "clamd": ("^--", "reference: clamd INSTREAM alone"),
              "sink+clamd": (":", "sink then clamd (the 1.0× line)")}
    for name, values in data["mib_per_s"].items():
        style, label = styles[name]
        ax.plot(data["sizes_mib"], values, style, label=label)
    ax.set_xscale("log")
    ax.set_xticks(data["sizes_mib"], [str(s) for s in data["sizes_mib"]])
    ax.set_xlabel("file size (MiB, digits-heavy CSV)")
    ax.set_ylabel("throughput (MiB/s)")
    ax.set_title("kinko: throughput against file size (2 cores, loopback)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    PNG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PNG)
    plt.close(fig)


def run(bench: Bench) -> dict[str, Any]:
    data = measure(bench)
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(json.dumps(data, indent=2) + "\n")
    draw(data)
    return data


def main() -> None:
    with bench_stack() as bench:
        run(bench)


if __name__ == "__main__":
    main()
