"""Memory: peak RSS of the client-app gunicorn worker while it receives an upload, and
of the pipeline worker while it scans and vaults it, for a small and a big file.

Flat means "not growing with the file size": the reference is the peak at the small
size, ``ratio`` the growth big/small (about 1 = flat).  Targets: <= 80 MB web,
<= 120 MB worker.  Knobs: ``KINKO_BENCH_SMALL_MB`` (default 64), ``KINKO_BENCH_BIG_MB``
(default 256; the full run is 1024).

Sampling: VmRSS of every client-app worker and of the worker process every 50 ms; the
kernel's own high-water mark (VmHWM, reset first through ``clear_refs``) backs it up
between samples.  The peak reported is the larger of the two.

Also sampled, and reported apart (``memory.web.scan_files.<N>MiB``, not judged): the
memory files a client-app worker holds for clamd (``portal.receiptscan``: an upload that
fits in ``KINKO_SCAN_BUFFER_MB`` is handed to clamd that way).  They are not RSS (written,
never mapped), but RAM all the same: what clamd's own temporary copy of a stream takes.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import (
    Bench,
    MiB,
    Payload,
    Record,
    RssSampler,
    bench_stack,
    env_int,
    mb,
    record,
    report,
    reset_peak,
    rss_kb,
    stack_processes,
    write_results,
)

TARGET_MB = {"web": 80.0, "worker": 120.0}


def measure(bench: Bench, size: int) -> dict[str, Any]:
    pids = stack_processes(bench.stack)
    all_pids = pids["web"] + pids["worker"]
    idle = {p: rss_kb(p) for p in all_pids}
    hwm_ok = all(reset_peak(p) for p in all_pids)
    payload = Payload("bin", size)
    with RssSampler(all_pids) as sampler:
        t0 = time.perf_counter()
        r = bench.upload(payload)
        if r.status_code != 201:
            raise RuntimeError(f"upload: {r.status_code} {r.text[:300]}")
        bench.wait_vaulted(r.json()["id"], interval=0.5)
        elapsed = time.perf_counter() - t0
    out: dict[str, Any] = {"size_mb": size // MiB, "seconds": elapsed,
                           "samples": sampler.samples, "hwm_used": hwm_ok}
    for role in ("web", "worker"):
        peak = max(max(sampler.peak[p], rss_kb(p, "VmHWM") if hwm_ok else 0)
                   for p in pids[role])
        out[role] = {"peak_mb": mb(peak), "idle_mb": max(mb(idle[p]) for p in pids[role]),
                     "sampled_mb": {p: mb(sampler.peak[p]) for p in pids[role]},
                     "scan_files_mb": max(mb(sampler.files_peak[p]) for p in pids[role])}
    return out


def run(bench: Bench) -> tuple[list[Record], dict[str, Any]]:
    small = env_int("KINKO_BENCH_SMALL_MB", 64) * MiB
    big = env_int("KINKO_BENCH_BIG_MB", 256) * MiB
    # Small first: RSS seldom goes back down, so a big file first would hide growth.
    results = {"small": measure(bench, small), "big": measure(bench, big)}
    records = [record(f"memory.{role}.peak_rss.{big // MiB}MiB",
                      results["big"][role]["peak_mb"], "MB",
                      results["small"][role]["peak_mb"], TARGET_MB[role])
               for role in ("web", "worker")]
    records += [record(f"memory.web.scan_files.{results[k]['size_mb']}MiB",
                       results[k]["web"]["scan_files_mb"], "MB", None, None)
                for k in ("small", "big")]
    return records, results


def main() -> None:
    with bench_stack() as bench:
        records, details = run(bench)
    report("memory", records, details)
    write_results(records)


if __name__ == "__main__":
    main()
