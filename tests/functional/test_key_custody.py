"""The client-facing process cannot decrypt the vault: the vault private key
is in no byte of its memory (nor the worker's), while the office app's
memory does hold it — the positive control that shows this test can fail."""

from __future__ import annotations

import re
from pathlib import Path

from storage.keys import VaultPrivateKey

from .harness import Stack

MAPS = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+)")


def pids_with(arg: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if arg.encode() in cmd:
            pids.append(int(proc.name))
    return pids


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
    client_pids = pids_with(f"127.0.0.1:{port}")
    office_pids = pids_with(f"127.0.0.1:{office_port}")
    worker_pids = [p for p in pids_with("worker") if p in _children_of(stack.server.pid)]
    assert client_pids and office_pids and worker_pids

    assert any(memory_contains(pid, raw) for pid in office_pids), "positive control failed"
    for pid in client_pids + worker_pids:
        assert not memory_contains(pid, raw), f"process {pid} holds the vault private key"


def _children_of(root: int) -> set[int]:
    kids: set[int] = set()
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == parent and int(proc.name) not in kids:
                kids.add(int(proc.name))
                frontier.append(int(proc.name))
    return kids
