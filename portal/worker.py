"""``kinko worker``: the pipeline worker (scan, pull, reconcile).

It holds the drop-zone key and the vault *public* key only: it can seal to
the vault, never open it.
"""

from __future__ import annotations

import logging
import threading

from . import status
from .jobs import Jobs, make_huey
from .reconcile import reconcile
from .services import Services, build_services
from .settings import Settings

log = logging.getLogger(__name__)

POLL_INITIAL_S = 0.02
POLL_MAX_S = 0.1


def run_worker(settings: Settings, threads: int | None = None) -> None:
    threads = threads or settings.worker_threads
    huey = make_huey(settings)
    holder: dict[str, Services] = {}
    lock = threading.Lock()

    def services() -> Services:
        with lock:
            if "s" not in holder:
                holder["s"] = build_services(settings, "worker", enqueue=jobs)
            return holder["s"]

    jobs = Jobs(huey, services)
    svc = services()
    # The embedded default has one worker: when it starts, the one before it
    # was killed, so it takes over every pending scan at once.  With a shared
    # queue (Redis) other workers may be mid-scan: their leases are honoured
    # and expire only if they die (settings.scan_lease_seconds).
    single = settings.queue_url.startswith("sqlite")
    report = reconcile(svc, reclaim_leases=single)
    log.info("worker started; %d uploads queued for scanning", len(report.rescanned))
    status.start_scanner_monitor(svc)
    # Polling an idle SQLite queue: at most POLL_MAX_S apart, so a new job
    # waits ~POLL_MAX_S/2 on average; each poll is one indexed SELECT
    # (about 10 a second per thread: no busy loop).
    consumer = huey.create_consumer(
        workers=threads, worker_type="thread", periodic=True,
        initial_delay=POLL_INITIAL_S, backoff=1.5, max_delay=POLL_MAX_S,
        check_worker_health=True,
    )
    consumer.run()
