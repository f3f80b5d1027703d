"""`kinko serve` runs several workers on one machine (KINKO_SERVE_WORKERS): the
first starts alone and takes over what the last run left, the others start once
it is ready and honour its leases; together they scan a backlog, every job once."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from .harness import Stack, children, cmdline


@pytest.fixture
def two_workers(stack: Stack) -> Iterator[Stack]:
    with stack.serving_with(KINKO_SERVE_WORKERS="2"):
        yield stack


def _workers(stack: Stack) -> dict[int, list[str]]:
    assert stack.server is not None
    argvs = {pid: cmdline(pid).decode().split("\0") for pid in children(stack.server.pid)}
    return {pid: argv for pid, argv in argvs.items() if "portal.cli" in argv and "worker" in argv}


def test_the_second_worker_starts_after_the_first_and_they_share_the_work(
        two_workers: Stack, acme_token: str) -> None:
    stack = two_workers
    deadline = time.monotonic() + 60
    while len(workers := _workers(stack)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(workers) == 2, workers
    first = [p for p, argv in workers.items() if "--shared" not in argv]
    second = [p for p, argv in workers.items() if "--shared" in argv]
    assert len(first) == 1 and len(second) == 1, workers
    assert "--ready-fd" in workers[first[0]]

    # The first worker's start-up reconcile (which breaks the leases of the run
    # before) is over before the second worker says anything.
    def started(pid: int) -> int:
        return log.find(f"[{pid}]: worker started")

    while True:
        log = (stack.base / "serve.log").read_text(errors="replace")
        if min(started(first[0]), started(second[0])) >= 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert started(first[0]) >= 0 and started(second[0]) >= 0, log[-2000:]
    assert started(first[0]) < log.find(f"[{second[0]}]")

    # A backlog sent at once: every upload scanned exactly once, by either worker.
    before = len(log)
    def send(i: int) -> str:
        data = b"no,note\n" + os.urandom(128 << 10).hex().encode()
        r = stack.api_upload(acme_token, data, f"shared-{i}.csv")
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(send, range(24)))
    for upload_id in ids:
        stack.wait_for(acme_token, upload_id, {"clean", "vaulted"}, timeout=180)
    with stack.db() as db:
        for upload_id in ids:
            actions = [r[0] for r in db.execute(
                "SELECT action FROM audit_events WHERE upload_id = ?", (upload_id,))]
            assert actions.count("system:scan:started") == 1, actions
            assert actions.count("system:scan:clean") == 1, actions
    log = (stack.base / "serve.log").read_text(errors="replace")[before:]
    runs = {pid: len(re.findall(rf"\[{pid}\]: Executing [\w.]*kinko\.scan: ", log))
            for pid in workers}
    assert sum(runs.values()) == len(ids), runs  # each job delivered once, none lost
    assert all(runs.values()), runs  # and both workers took a share
    assert stack.kinko("audit", "verify").returncode == 0
