"""Concurrency: N uploaders x 5 MiB at once (loopback only), all accepted, all vaulted,
0 errors; the total wall time (first byte sent to last ``vaulted``) against the sum of
clamd-only scans of payloads of the same kinds and sizes, measured in the same run (the
reference the issue names; reported).  Judged, as the end-to-end chain is: the same total
against the same N uploads sent at once to the minimal sink, plus those scans.

Each of ``KINKO_BENCH_CONC_REPEATS`` rounds (default 3) measures its two references and
then the uploads; the headline is the median of the rounds' ratios.  Knobs:
``KINKO_BENCH_UPLOADERS`` (default 50), ``KINKO_BENCH_CONC_MB`` (default 5).
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
    median,
    record,
    report,
    write_results,
)

# The issue names no number.  The end-to-end budget applies to the end-to-end reference
# (receiving the bytes, then scanning them), not to the scans alone: docs/performance.md.
TARGET = 1.15
TIMEOUT = 900.0


def _session(bench: Bench) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = bench.stack.cert
    return session


def _upload(bench: Bench, payload: Payload) -> tuple[str | None, str | None]:
    session = _session(bench)
    try:
        r = bench.upload(payload, session)
    except requests.RequestException as exc:
        return None, f"{type(exc).__name__}: {exc}"[:200]
    finally:
        session.close()
    if r.status_code != 201:
        return None, f"HTTP {r.status_code}: {r.text[:200]}"
    return str(r.json()["id"]), None


def _time_sink_at_once(bench: Bench, payloads: list[Payload]) -> float:
    """All the payloads sent at once to the minimal sink, as the uploaders send them
    to the portal (same pool, one connection each): first byte to last answer."""
    def send(payload: Payload) -> None:
        with _session(bench) as session:
            bench.send_to_sink(payload, session)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(len(payloads), 64)) as pool:
        list(pool.map(send, payloads))
    return time.perf_counter() - t0


def _round(bench: Bench, n: int, size: int) -> dict[str, Any]:
    """One measurement: the two references, then the n uploads at once."""
    kinds = ["csv" if i % 2 == 0 else "bin" for i in range(n)]
    payloads = [Payload(k, size) for k in kinds]
    # Reference: the scans alone, one after the other, of twins (clamd caches verdicts
    # of bytes it has seen, so the chain's own payloads must stay unseen).
    clamd = sum(bench.time_clamd(Payload(k, size)) for k in kinds)
    # Reference: receiving the same bytes, all at once, on the same server stack.
    sink = _time_sink_at_once(bench, payloads)

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
    return {"accepted": len(ids), "errors": errors[:10],
            "bad": len(errors) + len(not_vaulted),
            "not_vaulted": {i: final[i]["status"] for i in not_vaulted},
            "all_accepted_s": t_accepted - t0, "total_s": total,
            "clamd_sum_s": clamd, "sink_at_once_s": sink}


def run(bench: Bench) -> tuple[list[Record], dict[str, Any]]:
    n = env_int("KINKO_BENCH_UPLOADERS", 50)
    size = env_int("KINKO_BENCH_CONC_MB", 5) * MiB
    rounds = [_round(bench, n, size) for _ in range(env_int("KINKO_BENCH_CONC_REPEATS", 3))]
    # The headline, as for the chain: the median of the per-round ratios (each round
    # measures its references right before it).
    total = median([r["total_s"] for r in rounds])
    ratio = median([r["total_s"] / (r["sink_at_once_s"] + r["clamd_sum_s"]) for r in rounds])
    ratio_scans = median([r["total_s"] / r["clamd_sum_s"] for r in rounds])
    name = f"concurrency.{n}x{size // MiB}MiB"
    records = [
        record(name, total, "s", total / ratio, TARGET),
        record(name + ".vs_scans", total, "s", total / ratio_scans, None),
        record(name + ".errors", sum(r["bad"] for r in rounds), "count", None, 0),
    ]
    return records, {"uploaders": n, "size_mb": size // MiB, "rounds": rounds}


def main() -> None:
    with bench_stack() as bench:
        records, details = run(bench)
    report("concurrency", records, details)
    write_results(records)


if __name__ == "__main__":
    main()
