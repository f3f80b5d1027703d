"""The worker killed (SIGKILL, no cleanup) at every step of a scan resumes and
finishes exactly once: one clean verdict, one staged vault copy, then after the
pull one vault object that opens to the original bytes, no staged leftover, and
an intact audit chain.

The crash is real: ``kinko serve`` runs with ``KINKO_FAULT_CRASH_AT``; the
worker that takes the scan (serve runs one per core, either may) kills itself
at the checkpoint, and ``serve`` stops the other processes (one exits, all
stop).  The stack is then started again without the fault.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator

import pytest

from .harness import Stack, build_stack, require_clamd, teardown_stack

STEPS = ["scan:streaming", "scan:staged", "scan:verdict", "scan:committed"]


@pytest.fixture(scope="module")
def crash_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_clamd()
    s = build_stack(tmp_path_factory.mktemp)
    try:
        yield s
    finally:
        s.env.pop("KINKO_FAULT_CRASH_AT", None)
        teardown_stack(s)


def _row(stack: Stack, upload_id: str) -> tuple[str, str | None]:
    with stack.db() as db:
        row = db.execute("SELECT status, staged_key FROM uploads WHERE id = ?",
                         (upload_id,)).fetchone()
    assert row is not None
    return str(row[0]), row[1]


def _events(stack: Stack, upload_id: str, action: str) -> int:
    with stack.db() as db:
        return int(db.execute("SELECT count(*) FROM audit_events WHERE upload_id = ? "
                              "AND action = ?", (upload_id, action)).fetchone()[0])


@pytest.mark.parametrize("step", STEPS)
def test_worker_killed_during_scan_resumes_once(crash_stack: Stack, step: str) -> None:
    stack = crash_stack
    token = stack.token("acme", "hr")
    stack.stop_server()
    log = stack.base / "serve.log"
    seen = log.stat().st_size
    stack.env["KINKO_FAULT_CRASH_AT"] = step
    stack.start_server()
    data = b"id,note\n" + os.urandom(3 << 20).hex().encode()[: 3 << 20]  # > 2 chunks
    up = stack.api_upload(token, data, f"scan-crash-{step.split(':')[1]}.csv").json()

    # The worker reaches the checkpoint and dies; serve then stops everything.
    assert stack.server is not None
    try:
        stack.server.wait(timeout=90)
    finally:
        stack.env.pop("KINKO_FAULT_CRASH_AT")
    with log.open("rb") as f:
        f.seek(seen)
        # Whichever of serve's workers took the scan is the one that died.
        assert re.search(rb"kinko worker \d+ exited", f.read()), stack.log_tail()
    status, _staged = _row(stack, up["id"])
    if step == "scan:committed":
        assert status == "clean"
    else:
        assert status in ("received", "scanning"), status
    assert _events(stack, up["id"], "system:scan:clean") == (step == "scan:committed")

    stack.start_server()  # the new worker takes the scan over
    stack.wait_for(token, up["id"], {"clean"}, timeout=90)
    assert _events(stack, up["id"], "system:scan:clean") == 1
    status, staged = _row(stack, up["id"])
    assert staged is not None
    # Once the scan is over the reconciler would remove any other staged copy;
    # the scan itself already did.
    deadline = time.monotonic() + 10
    while len(stack.objects("vault", f"staging/{up['id']}.")) != 1:
        assert time.monotonic() < deadline, stack.objects("vault", f"staging/{up['id']}.")
        time.sleep(0.2)
    assert [stack.object_id("vault", o)
            for o in stack.objects("vault", f"staging/{up['id']}.")] == [staged]
    assert stack.objects("vault", f"vault/{up['id']}.") == []

    stack.kinko("vault", "pull", up["id"], "--staff", "boss")
    stack.kinko("vault", "pull", up["id"], "--staff", "boss")  # idempotent
    assert stack.status(token, up["id"])["status"] == "vaulted"
    assert _events(stack, up["id"], "office:file:vaulted") == 1
    assert stack.objects("dropzone", f"dz/{up['id']}") == []
    assert stack.objects("vault", f"staging/{up['id']}.") == []
    assert len(stack.objects("vault", f"vault/{up['id']}.")) == 1
    assert _row(stack, up["id"])[1] is None
    assert stack.vault_bytes(up["id"]) == data
    stack.kinko("audit", "verify")
