"""The work queue (Huey): SQLite for one machine, Redis for many.

The queue only makes work prompt; the database is the truth.  A job that is
lost (a worker killed mid-job, a queue wiped) is found again by the periodic
reconciler, and every job is idempotent, so running one twice is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlparse

from huey import Huey, RedisHuey, SqliteHuey, crontab

from .audit import SYSTEM, Actor
from .models import Staff
from .notices import run_notices
from .pipeline import PipelineError, pull_upload, scan_upload
from .reconcile import reconcile
from .reports import run_monthly
from .services import Services
from .settings import Settings, SettingsError

log = logging.getLogger(__name__)


def make_huey(settings: Settings) -> Huey:
    url = settings.queue_url
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        return SqliteHuey("kinko", filename=parsed.path, fsync=True)
    if parsed.scheme in ("redis", "rediss"):
        return RedisHuey("kinko", url=url)
    raise SettingsError(f"unsupported KINKO_QUEUE_URL scheme: {parsed.scheme!r}")


class Jobs:
    """Enqueue side (any process) and task bodies (run by the worker).

    ``services`` is a factory so that the web processes, which only enqueue,
    never build worker services.
    """

    def __init__(self, huey: Huey, services: Callable[[], Services] | None = None) -> None:
        self.huey = huey
        self._services = services
        self._scan = huey.task(name="kinko.scan")(self._run_scan)
        self._pull = huey.task(name="kinko.pull")(self._run_pull)
        huey.periodic_task(crontab(minute="*"), name="kinko.reconcile")(self._run_reconcile)
        huey.periodic_task(crontab(minute="*"), name="kinko.notices")(self._run_notices)
        # Hourly: the first run after a JST month ends closes it (once per company).
        huey.periodic_task(crontab(minute="7"), name="kinko.monthly_reports")(
            self._run_monthly_reports)

    # Enqueuer protocol
    def scan(self, upload_id: str, delay: float = 0) -> None:
        if delay > 0:
            self._scan.schedule(args=(upload_id,), delay=delay)
        else:
            self._scan(upload_id)

    def pull(self, upload_id: str, staff_id: int | None) -> None:
        self._pull(upload_id, staff_id)

    # Task bodies
    def _svc(self) -> Services:
        if self._services is None:
            raise RuntimeError("this process only enqueues jobs")
        return self._services()

    def _run_scan(self, upload_id: str) -> None:
        outcome = scan_upload(self._svc(), upload_id)
        if outcome.retry_in is not None:
            self.scan(upload_id, delay=outcome.retry_in)

    def _run_pull(self, upload_id: str, staff_id: int | None) -> None:
        services = self._svc()
        actor: Actor = SYSTEM
        if staff_id is not None:
            with services.sessions() as db:
                staff = db.get(Staff, staff_id)
                actor = Actor("staff", staff_id, staff.login if staff else "")
        try:
            pull_upload(services, upload_id, actor)
        except PipelineError as exc:
            log.info("pull of %s skipped: %s", upload_id, exc.code)

    def _run_reconcile(self) -> None:
        reconcile(self._svc())

    def _run_notices(self) -> None:
        run_notices(self._svc())

    def _run_monthly_reports(self) -> None:
        run_monthly(self._svc())
