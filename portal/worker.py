"""``kinko worker``: the pipeline worker (scan, pull, reconcile).

It holds the drop-zone key and the vault *public* key only: it can seal to
the vault, never open it.
"""

from __future__ import annotations

import logging
import os
import threading

from . import status
from .jobs import Jobs, make_huey
from .reconcile import reconcile
from .services import Services, build_services
from .settings import Settings

log = logging.getLogger(__name__)

POLL_INITIAL_S = 0.02
POLL_MAX_S = 0.1


def run_worker(settings: Settings, threads: int | None = None, *, shared: bool = False,
               ready_fd: int | None = None) -> None:
    """Consume the queue until stopped.

    ``shared``: other workers consume the same queue already (``kinko serve``
    starts its second worker so), so their leases are honoured.  ``ready_fd``:
    a pipe to write one byte to once the start-up reconcile is done (``kinko
    serve`` starts the other workers only then)."""
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
    # The first worker on the embedded (SQLite) queue starts alone: the workers
    # before it were stopped with `kinko serve`, so it takes over every pending
    # scan at once; the others start after it is ready.  With a queue shared
    # with workers elsewhere (Redis), or started beside one, other workers may
    # be mid-scan: their leases are honoured and expire only if they die
    # (settings.scan_lease_seconds).
    alone = not shared and settings.queue_url.startswith("sqlite")
    report = reconcile(svc, reclaim_leases=alone)
    log.info("worker started; %d uploads queued for scanning", len(report.rescanned))
    if ready_fd is not None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)
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
