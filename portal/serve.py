"""``kinko serve``: the embedded default, every process on one machine.

client app (HTTPS) + office app (HTTPS, 127.0.0.1) + worker, and a clamd of
its own when KINKO_CLAMD is unset.  SIGINT/SIGTERM stop them all; if one
dies, the others are stopped too (never half a portal).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from scanners.clamd_process import ClamdProcess

from .settings import Settings


def _gunicorn(app: str, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--config", "python:portal.gunicorn_conf",
            "--bind", f"{host}:{port}", app]


def serve(settings: Settings, *, banner: str = "") -> int:
    clamd: ClamdProcess | None = None
    addr_file = settings.run_dir / "clamd.address"
    info_file = settings.run_dir / "clamd.json"
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    stopping = False
    ready: int | None = None  # the first worker's "ready" pipe, until it is

    def stop(_sig: int = 0, _frame: object = None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        if settings.clamd is None:
            clamd = ClamdProcess(settings.run_dir / "clamd", max_bytes=settings.max_upload_bytes)
            address = clamd.start()
            addr_file.write_text(address)
            official = bool(clamd.signature_info and clamd.signature_info.official)
            info_file.write_text(json.dumps({"official": official}))
            if not official:
                print("WARNING: clamd runs with kinko's test signature only (no official "
                      "ClamAV database here: freshclam needs the internet).", file=sys.stderr)
        env = dict(os.environ, KINKO_HOME=str(settings.home))
        # Each upload seals in a thread of its own (portal.intake), and glibc
        # gives threads malloc arenas of their own: two are plenty for the
        # client app and keep its memory flat (docs/performance.md).
        # PYTHONNODEBUGRANGES: code objects without column tables (only the
        # ^^^ marks of tracebacks go), about 0.4 MB.
        web_env = {"MALLOC_ARENA_MAX": "2", "PYTHONNODEBUGRANGES": "1", **env}
        procs.append(("client app", subprocess.Popen(
            _gunicorn("portal.client:create_app()", settings.client_host, settings.client_port),
            env=web_env)))
        procs.append(("office app", subprocess.Popen(
            _gunicorn("portal.office:create_app()", settings.office_host, settings.office_port),
            env=env)))
        # KINKO_SERVE_WORKERS=0: the workers run elsewhere (`kinko worker`
        # on other machines, sharing the Redis queue and the database).  The
        # first one starts alone and takes over what the last run left; the
        # others start once it says so (--ready-fd), and honour its leases.
        worker = [sys.executable, "-m", "portal.cli", "worker"]
        if settings.serve_workers:
            ready, ready_w = os.pipe()
            procs.append(("worker 1", subprocess.Popen(
                [*worker, "--ready-fd", str(ready_w)], env=env, pass_fds=(ready_w,))))
            os.close(ready_w)
        print(f"kinko client app: https://localhost:{settings.client_port}/login\n"
              f"kinko office app: https://127.0.0.1:{settings.office_port}/login\n"
              f"(self-signed certificate: {settings.tls_cert})\n{banner}", flush=True)
        code = 0
        while not stopping:
            for name, p in procs:
                if p.poll() is not None:
                    print(f"kinko {name} exited; stopping the others", file=sys.stderr)
                    code = 1
                    stopping = True
            if ready is None or stopping:
                time.sleep(0.5)
            elif select.select([ready], [], [], 0.5)[0]:
                if os.read(ready, 1):  # else it died: the poll above sees it
                    for n in range(2, settings.serve_workers + 1):
                        procs.append((f"worker {n}", subprocess.Popen(
                            [*worker, "--shared"], env=env)))
                os.close(ready)
                ready = None
        return code
    finally:
        if ready is not None:
            os.close(ready)
        for _name, p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 25
        for _name, p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
        if clamd is not None:
            for f in (addr_file, info_file):
                Path(f).unlink(missing_ok=True)
            clamd.stop()
