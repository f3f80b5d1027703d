"""The client-facing process cannot decrypt the vault: the vault private key
is in no byte of its memory (nor the worker's), while the office app's
memory does hold it — the positive control that shows this test can fail."""

from __future__ import annotations

import re

from storage.keys import VaultPrivateKey

from .harness import Stack, cmdline, descendants

MAPS = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+)")


def pids_with(arg: str, pids: set[int]) -> list[int]:
    return [p for p in pids if arg.encode() in cmdline(p).split(b"\0")]


def memory_contains(pid: int, needle: bytes) -> bool:
    """Search every private writable mapping (heap, anonymous memory)."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            m = MAPS.match(line)
            if not m or not m.group(3).startswith("rw"):
                continue
            start, end = int(m.group(1), 16), int(m.group(2), 16)
            try:
                mem.seek(start)
                if needle in mem.read(end - start):
                    return True
            except (OSError, OverflowError, ValueError):
                continue
    return False


def test_only_the_office_process_holds_the_vault_private_key(
        stack: Stack, acme_token: str) -> None:
    # Exercise the client app and the worker first, so their key use is real.
    up = stack.api_upload(acme_token, b"a,b\n1,2\n" + bytes(str(id(stack)), "ascii"),
                          "k.csv").json()
    stack.wait_for(acme_token, up["id"], {"clean"})
    stack.office("boss")

    private = VaultPrivateKey.load(stack.home / "keys" / "vault.key")
    raw = private._key.private_bytes_raw()  # noqa: SLF001 - the test needs the raw bytes
    port = stack.env["KINKO_CLIENT_PORT"]
    office_port = stack.env["KINKO_OFFICE_PORT"]
    assert stack.server is not None
    stack_pids = descendants(stack.server.pid)
    client_pids = pids_with(f"127.0.0.1:{port}", stack_pids)
    office_pids = pids_with(f"127.0.0.1:{office_port}", stack_pids)
    worker_pids = pids_with("worker", stack_pids)
    assert client_pids and office_pids and worker_pids

    assert any(memory_contains(pid, raw) for pid in office_pids), "positive control failed"
    for pid in client_pids + worker_pids:
        assert not memory_contains(pid, raw), f"process {pid} holds the vault private key"

