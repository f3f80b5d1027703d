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


def run_worker(settings: Settings, threads: int = 2) -> None:
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
    report = reconcile(svc)
    log.info("worker started; %d uploads queued for scanning", len(report.rescanned))
    status.start_scanner_monitor(svc)
    consumer = huey.create_consumer(
        workers=threads, worker_type="thread", periodic=True,
        initial_delay=0.05, backoff=1.2, max_delay=0.5, check_worker_health=True,
    )
    consumer.run()
