"""A pull killed (SIGKILL, no cleanup) after every step converges when repeated:
exactly one vault object, no drop-zone object, the original bytes."""

from __future__ import annotations

import os
import signal

import pytest

from .harness import Stack
from .invariants import check_invariants

STEPS = ["pull:copying", "pull:written", "pull:verified", "pull:committed",
         "pull:dropzone_deleted"]


@pytest.mark.parametrize("step", STEPS)
def test_pull_killed_at_each_step_converges(stack: Stack, acme_token: str, step: str) -> None:
    data = b"id,note\n" + os.urandom(3 << 20).hex().encode()[: 3 << 20]  # > 2 copy chunks
    up = stack.api_upload(acme_token, data, f"crash-{step}.csv").json()
    stack.wait_for(acme_token, up["id"], {"clean"})

    env = dict(stack.env, KINKO_FAULT_CRASH_AT=step)
    crashed = stack.kinko("vault", "pull", up["id"], "--staff", "boss", env=env, check=False)
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr[-500:])

    # Whatever the crash left, the upload is somewhere: never neither.
    status = stack.status(acme_token, up["id"])["status"]
    in_dropzone = stack.objects("dropzone", f"dz/{up['id']}")
    vault_objects = stack.objects("vault", f"vault/{up['id']}.")
    if status == "clean":
        assert len(in_dropzone) == 1
    else:
        assert status == "vaulted" and len(vault_objects) >= 1

    stack.kinko("vault", "pull", up["id"], "--staff", "boss")
    stack.kinko("vault", "pull", up["id"], "--staff", "boss")  # and again: idempotent

    assert stack.status(acme_token, up["id"])["status"] == "vaulted"
    assert stack.objects("dropzone", f"dz/{up['id']}") == []
    assert len(stack.objects("vault", f"vault/{up['id']}.")) == 1
    assert stack.vault_bytes(up["id"]) == data
    stack.kinko("audit", "verify")
    # The random tail of the file is a marker: no plaintext anywhere, and the
    # whole stack (not just this upload) is consistent after the crash.
    check_invariants(stack, markers=[data[-64:]])
