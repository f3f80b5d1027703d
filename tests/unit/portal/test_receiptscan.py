"""Which way the scan while receiving goes (portal.receiptscan.ReceiptScan.start): a
memory file for clamd (FILDES) only for a clamd on a unix socket and an upload whose
declared size fits in what is left of the process's budget; a stream otherwise.  The
budget comes back whatever way the scan ends.  (The verdicts themselves: the real-clamd
tests of scanners.clamd and tests/functional/test_scan_on_receipt.py.)"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from portal import receiptscan
from portal.receiptscan import ReceiptScan, memory_budget
from scanners.clamd import ClamdClient

MiB = 1 << 20


@pytest.fixture(autouse=True)
def fresh_budgets() -> Iterator[None]:
    receiptscan._budgets.clear()
    receiptscan._slots.clear()
    yield
    receiptscan._budgets.clear()
    receiptscan._slots.clear()


@pytest.fixture
def unix_listener(tmp_path: Path) -> Iterator[str]:
    """Accepts connections into its backlog and reads nothing (enough to start a
    stream; no verdict is asked for here)."""
    path = tmp_path / "clamd.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        sock.listen(16)
        yield f"unix://{path}"


def services(address: str, *, budget: int, slots: int = 8) -> Any:
    settings = SimpleNamespace(scan_on_receipt=slots, scan_buffer_bytes=budget,
                               scan_timeout=5)
    return SimpleNamespace(settings=settings,
                           scanner=lambda: ClamdClient(address, timeout=2))


def start(svc: Any, size_hint: int | None) -> ReceiptScan:
    scan = ReceiptScan.start(cast(Any, svc), size_hint)
    assert scan is not None
    return scan


def test_a_declared_size_within_the_budget_goes_in_memory(unix_listener: str) -> None:
    svc = services(unix_listener, budget=MiB)
    budget = memory_budget(MiB)
    first = start(svc, 768 << 10)
    assert first.in_memory and budget.used == 768 << 10
    second = start(svc, 512 << 10)  # does not fit in what is left: streams
    assert not second.in_memory and budget.used == 768 << 10
    unknown = start(svc, None)  # no declared length: streams
    assert not unknown.in_memory
    first.cancel()
    assert budget.used == 0
    third = start(svc, MiB)
    assert third.in_memory and budget.used == MiB
    third.feed(b"x" * 10)
    third.finish("u" * 32, 11)  # not what was fed: no verdict can follow
    assert third.until is None and budget.used == 0
    for scan in (second, unknown):
        scan.cancel()


def test_a_failed_write_gives_the_budget_back(unix_listener: str) -> None:
    svc = services(unix_listener, budget=MiB)
    scan = start(svc, 100)
    assert scan.in_memory
    scan.feed(b"x" * 101)  # more than declared: the memory file is abandoned
    assert not scan.live and memory_budget(MiB).used == 0


def test_no_budget_or_no_unix_socket_means_a_stream(unix_listener: str) -> None:
    assert not start(services(unix_listener, budget=0), 10).in_memory
    with socket.socket() as tcp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(4)
        port = tcp.getsockname()[1]
        scan = start(services(f"tcp://127.0.0.1:{port}", budget=MiB), 10)
        assert not scan.in_memory and memory_budget(MiB).used == 0
        scan.cancel()


def test_no_free_slot_means_no_scan_while_receiving(unix_listener: str) -> None:
    svc = services(unix_listener, budget=MiB, slots=1)
    held = start(svc, 10)
    assert ReceiptScan.start(cast(Any, svc), 10) is None
    held.cancel()
    assert memory_budget(MiB).used == 0
    start(svc, 10).cancel()
