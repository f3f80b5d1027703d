"""Many workers on one Redis queue (scale profile): a backlog is shared with
no job done twice and none lost, and a worker killed mid-scan leaves a job
that the other worker finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import KINKO, ROOT, Stack, scale_only

pytestmark = scale_only("several workers share a queue only with Redis (KINKO_QUEUE_URL)")

LEASE = "3"  # seconds; production default 60


class Workers:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        log = self.stack.base / f"{name}.log"
        proc = subprocess.Popen([*KINKO, "worker"], cwd=ROOT, start_new_session=True,
                                env=dict(self.stack.env, KINKO_SCAN_LEASE_SECONDS=LEASE, **env),
                                stdout=log.open("wb"), stderr=subprocess.STDOUT)
        self.procs.append((proc, log))
        return proc

    def stop(self) -> None:
        for proc, _log in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)


@pytest.fixture
def no_serve_worker(stack: Stack) -> Iterator[Workers]:
    """The stack's `kinko serve` without its own worker; the test runs its own."""
    with stack.serving_with(KINKO_SERVE_WORKERS="0"):
        workers = Workers(stack)
        try:
            yield workers
        finally:
            workers.stop()


def _actions(stack: Stack, upload_id: str) -> list[str]:
    with stack.db() as db:
        return [r[0] for r in db.execute(
            "SELECT action FROM audit_events WHERE upload_id = ? ORDER BY id", (upload_id,))]


def _executions(log: Path) -> int:
    text = log.read_text(errors="replace")
    return sum(1 for line in text.splitlines() if "Executing" in line and "kinko.scan:" in line)


def test_two_workers_share_a_backlog(stack: Stack, acme_token: str,
                                     no_serve_worker: Workers) -> None:
    ids = []
    for i in range(16):  # the backlog waits in Redis: no worker runs yet
        data = b"no,note\n" + os.urandom(256 << 10).hex().encode()
        r = stack.api_upload(acme_token, data, f"backlog-{i}.csv")
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    time.sleep(1)
    assert {stack.status(acme_token, u)["status"] for u in ids} == {"received"}

    no_serve_worker.start("worker-a")
    no_serve_worker.start("worker-b")
    for upload_id in ids:
        stack.wait_for(acme_token, upload_id, {"clean"}, timeout=180)

    for upload_id in ids:  # each scanned exactly once: one start, one verdict
        actions = _actions(stack, upload_id)
        assert actions.count("system:scan:started") == 1, actions
        assert actions.count("system:scan:clean") == 1, actions
    counts = [_executions(log) for _proc, log in no_serve_worker.procs]
    assert sum(counts) == len(ids), counts  # each job delivered once, none lost
    assert all(c > 0 for c in counts), counts  # and both workers took a share
    assert stack.kinko("audit", "verify").returncode == 0


def test_a_worker_killed_mid_scan_is_finished_by_the_other(
        stack: Stack, acme_token: str, no_serve_worker: Workers) -> None:
    # Worker A dies (SIGKILL, no cleanup) once clamd has been sent the bytes.
    victim = no_serve_worker.start("worker-victim", KINKO_FAULT_CRASH_AT="scan:verdict")
    data = b"no,note\n" + os.urandom(1 << 20).hex().encode()
    up = stack.api_upload(acme_token, data, "killed-mid-scan.csv").json()
    victim.wait(60)
    assert victim.returncode == -signal.SIGKILL
    assert stack.status(acme_token, up["id"])["status"] == "scanning"

    # Worker B honours the dead worker's lease, then takes the scan over
    # (its reconciler runs every minute).
    no_serve_worker.start("worker-rescuer")
    body = stack.wait_for(acme_token, up["id"], {"clean"}, timeout=150)
    assert body["status"] == "clean"
    actions = _actions(stack, up["id"])
    assert actions.count("system:scan:started") == 1, actions
    assert actions.count("system:scan:clean") == 1, actions

    stack.kinko("vault", "pull", up["id"], "--staff", "boss")
    assert stack.status(acme_token, up["id"])["status"] == "vaulted"

    assert len(stack.objects("vault", f"vault/{up['id']}.")) == 1
    assert stack.objects("dropzone", f"dz/{up['id']}") == []
    assert stack.vault_bytes(up["id"]) == data
    assert stack.kinko("audit", "verify").returncode == 0
