"""The work queue (Huey): SQLite for one machine, Redis for many.

The queue only makes work prompt; the database is the truth.  A job that is
lost (a worker killed mid-job, a queue wiped) is found again by the periodic
reconciler, and every job is idempotent, so running one twice is harmless.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from storage.errors import ObjectNotFoundError, StorageError

from .audit import SYSTEM, Actor
from .models import Staff
from .pipeline import PipelineError, pull_upload, scan_upload
from .services import Services
from .settings import Settings, SettingsError

# huey.storage imports redis and psycopg whenever they are installed: about
# 15 MB in every process, the web apps included, that a sqlite:// queue never
# uses.  They are kept out here and loaded by make_huey for a redis:// queue.
_BLOCKED = [name for name in ("redis", "psycopg") if name not in sys.modules]
for _name in _BLOCKED:
    sys.modules[_name] = None  # type: ignore[assignment]  # "import redis" fails
try:
    import huey.storage as _huey_storage
    from huey import Huey, RedisHuey, SqliteHuey, crontab
finally:
    for _name in _BLOCKED:
        if sys.modules.get(_name, 0) is None:
            del sys.modules[_name]

log = logging.getLogger(__name__)


def make_huey(settings: Settings) -> Huey:
    url = settings.queue_url
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        return SqliteHuey("kinko", filename=parsed.path, fsync=True)
    if parsed.scheme in ("redis", "rediss"):
        _load_redis()
        return RedisHuey("kinko", url=url)
    raise SettingsError(f"unsupported KINKO_QUEUE_URL scheme: {parsed.scheme!r}")


def _load_redis() -> None:
    """Give huey.storage the redis names its import left unset (see above)."""
    st: Any = _huey_storage
    if st.Redis is None:
        import redis
        import redis.exceptions

        st.ConnectionPool, st.Redis = redis.ConnectionPool, redis.Redis
        st.ConnectionError = redis.exceptions.ConnectionError
        st.TimeoutError = redis.exceptions.TimeoutError
        st.RedisStorage.redis_client = redis.Redis


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
        outcome = scan_upload(self._svc(), upload_id, pull_inline=True)
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
        except ObjectNotFoundError:
            log.warning("pull of %s failed: the drop-zone object is missing", upload_id)
        except (StorageError, OSError) as exc:
            # The vault (or the drop zone) failed to write or read: the
            # drop-zone copy is untouched (pull_upload deletes it only after a
            # verified commit), so try again until storage is back.
            delay = services.settings.pull_retry_seconds
            log.warning("pull of %s failed (%s); retrying in %.0f s", upload_id,
                        type(exc).__name__, delay)
            self._pull.schedule(args=(upload_id, staff_id), delay=delay)

    # The periodic task bodies import their modules here: the web apps only
    # enqueue and never run them (docs/performance.md, "Web memory").
    def _run_reconcile(self) -> None:
        from .reconcile import reconcile
        reconcile(self._svc())

    def _run_notices(self) -> None:
        from .notices import run_notices
        run_notices(self._svc())

    def _run_monthly_reports(self) -> None:
        from .reports import run_monthly
        run_monthly(self._svc())
