"""gunicorn settings shared by ``kinko serve`` and the Procfile.

gthread workers: a slow upload holds one thread, not a whole process, and
the request body is streamed to the app as it arrives.
"""

import functools
from collections.abc import Callable
from typing import Any

from portal.settings import Settings

_settings = Settings.from_env()

worker_class = "gthread"
workers = 2
# Every connection that has started a request holds a thread until the request
# is done, however slowly its headers or body arrive (gunicorn has no header
# timeout), so the thread count is the number of slow clients the app can
# hold while still serving others: 2 × 64 (KINKO_WEB_THREADS).  With 8 threads,
# 16 slow connections stopped every upload (tests/functional/test_load.py).
# Idle threads cost next to nothing; see docs/deploy.md "Slow clients".
threads = _settings.web_threads
timeout = 120
# gunicorn >= 25 opens a control socket in ~/.gunicorn by default: one path
# for both apps (the second fails to bind) and an admin surface nobody here
# uses.  Off; older gunicorns ignore the name.
control_socket_disable = True
graceful_timeout = 20
keepalive = 5
accesslog = "-"
errorlog = "-"
# The access log line carries method, path (ids only), status and size:
# never a query string value, header or body.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(D)sus'
if _settings.tls_cert.exists() and _settings.tls_key.exists():
    certfile = str(_settings.tls_cert)
    keyfile = str(_settings.tls_key)

# No product or version banner: answer "Server: kinko" instead of gunicorn's.
import gunicorn.http.wsgi as _wsgi  # noqa: E402

_wsgi.SERVER = "kinko"
_wsgi.SERVER_SOFTWARE = "kinko"

# A request body is read with recv() calls as large as this (gunicorn asks for
# up to 1 MiB).  Over TLS each call returns one record (16 KiB at most), so a
# 1 MiB request only makes Python allocate, map, shrink and unmap a 1 MiB
# buffer per record, with the GIL held.  64 KiB comes from the heap instead.
import gunicorn.http.unreader as _unreader  # noqa: E402

_unreader.SocketUnreader.max_body_chunk = 64 * 1024


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes  # on first use: the gunicorn master never needs it

    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc
        return None


def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:
    """Give the C heap's free pages back to the OS after every request: glibc
    keeps what a request's buffers, TLS and SQLite freed, and the client app's
    memory target has no room for it (docs/performance.md).  About 5-100 µs."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
