"""Concurrency: N uploaders x 5 MiB at once (loopback only), all accepted, all vaulted,
0 errors; the total wall time (first byte sent to last ``vaulted``) against the sum of
clamd-only scans of payloads of the same kinds and sizes, measured in the same run.

Knobs: ``KINKO_BENCH_UPLOADERS`` (default 50), ``KINKO_BENCH_CONC_MB`` (default 5).
The pool of client threads is bounded by the number of uploaders (at most 64).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from bench.common import (
    Bench,
    MiB,
    Payload,
    Record,
    bench_stack,
    env_int,
    event_times,
    record,
    report,
    write_results,
)

TARGET = 1.15  # the issue names none; the end-to-end budget, see docs/performance.md
TIMEOUT = 900.0


def _upload(bench: Bench, payload: Payload) -> tuple[str | None, str | None]:
    session = requests.Session()
    session.trust_env = False
    session.verify = bench.stack.cert
    try:
        r = bench.upload(payload, session)
    except requests.RequestException as exc:
        return None, f"{type(exc).__name__}: {exc}"[:200]
    finally:
        session.close()
    if r.status_code != 201:
        return None, f"HTTP {r.status_code}: {r.text[:200]}"
    return str(r.json()["id"]), None


def run(bench: Bench) -> tuple[list[Record], dict[str, Any]]:
    n = env_int("KINKO_BENCH_UPLOADERS", 50)
    size = env_int("KINKO_BENCH_CONC_MB", 5) * MiB
    kinds = ["csv" if i % 2 == 0 else "bin" for i in range(n)]
    payloads = [Payload(k, size) for k in kinds]
    # Reference: the scans alone, one after the other, of twins (clamd caches verdicts
    # of bytes it has seen, so the chain's own payloads must stay unseen).
    clamd = sum(bench.time_clamd(Payload(k, size)) for k in kinds)

    t0 = time.time()
    with ThreadPoolExecutor(max_workers=min(n, 64)) as pool:
        outcomes = list(pool.map(lambda p: _upload(bench, p), payloads))
    t_accepted = time.time()
    errors = [e for _, e in outcomes if e]
    ids = [i for i, _ in outcomes if i]
    pending = set(ids)
    final: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + TIMEOUT
    while pending and time.monotonic() < deadline:
        r = bench.http.get(bench.stack.client_url + "/api/v1/uploads",
                           headers={"Authorization": f"Bearer {bench.token}"}, timeout=60)
        r.raise_for_status()
        for u in r.json()["uploads"]:
            if u["id"] in pending and u["status"] in ("vaulted", "infected", "refused"):
                pending.discard(u["id"])
        time.sleep(0.5)
    for i in ids:
        final[i] = bench.status(i)
    not_vaulted = [i for i in ids if final[i]["status"] != "vaulted"]
    ends = [event_times(final[i])["vaulted"] for i in ids if i not in not_vaulted]
    total = (max(ends) if ends else time.time()) - t0
    bad = len(errors) + len(not_vaulted)
    records = [
        record(f"concurrency.{n}x{size // MiB}MiB", total, "s", clamd, TARGET),
        record(f"concurrency.{n}x{size // MiB}MiB.errors", bad, "count", None, 0),
    ]
    details = {"uploaders": n, "size_mb": size // MiB, "accepted": len(ids),
               "errors": errors[:10], "not_vaulted": {i: final[i]["status"]
                                                       for i in not_vaulted},
               "all_accepted_s": t_accepted - t0, "total_s": total,
               "clamd_sum_s": clamd}
    return records, details


def main() -> None:
    with bench_stack() as bench:
        records, details = run(bench)
    report("concurrency", records, details)
    write_results(records)


if __name__ == "__main__":
    main()
