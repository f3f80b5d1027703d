"""The minimal sink: the reference for "receiving bytes over HTTPS" (bench only).

Served by the same gunicorn config as the client app (`portal.gunicorn_conf`:
gthread, same TLS certificate), it reads the request body in 64 KiB chunks, as
`portal.intake` does, and throws it away.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

CHUNK = 64 << 10  # portal.intake.READ_CHUNK


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    stream = environ["wsgi.input"]
    size = 0
    while True:
        data = stream.read(CHUNK)
        if not data:
            break
        size += len(data)
    body = f'{{"size": {size}}}'.encode()
    status = "201 Created" if environ.get("REQUEST_METHOD") == "POST" else "200 OK"
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]
