"""`kinko serve` runs several workers on one machine (KINKO_SERVE_WORKERS): the
first starts alone and takes over what the last run left, the others start once
it is ready and honour its leases; together they scan a backlog, every job once."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .harness import Stack


@pytest.fixture
def two_workers(stack: Stack) -> Iterator[Stack]:
    stack.stop_server()
    saved = dict(stack.env)
    stack.env["KINKO_SERVE_WORKERS"] = "2"
    stack.start_server()
    try:
        yield stack
    finally:
        stack.stop_server()
        stack.env.clear()
        stack.env.update(saved)
        stack.start_server()


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _workers(stack: Stack) -> dict[int, list[str]]:
    assert stack.server is not None
    out = {}
    for pid in _children(stack.server.pid):
        try:
            argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "portal.cli" in argv and "worker" in argv:
            out[pid] = argv
    return out


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
