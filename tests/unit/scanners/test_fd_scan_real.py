"""FdScan (an upload held in a sealed memory file, handed to clamd with FILDES) against
a real clamd: the verdicts of ``scan_stream``, a feeder that never waits, a file that
cannot change once it is handed over, and never clean unless every byte was fed."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from _scanners_helpers import eicar_bytes, feed_in_chunks

from scanners import ScannerUnavailableError
from scanners.clamd import ClamdClient, FdScan
from scanners.clamd_process import ClamdProcess

pytestmark = pytest.mark.clamd




def _memfds() -> list[str]:
    """This process's open memory files of FdScan."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/memfd:kinko-scan"):
            found.append(target)
    return found


def test_clean_and_infected_like_scan_stream(clamd_client: ClamdClient) -> None:
    before = _memfds()
    data = os.urandom(12 << 20)
    clean = FdScan(clamd_client, max_bytes=len(data))
    assert feed_in_chunks(clean, data, chunk=100_000)
    assert clean.sent == len(data)
    assert clean.result().verdict == "clean"

    infected = FdScan(clamd_client, max_bytes=1 << 20)
    data = os.urandom(300_000) + eicar_bytes() + os.urandom(300_000)
    assert feed_in_chunks(infected, data, chunk=7_000)  # the signature spans several writes
    result = infected.result()
    assert result.verdict == "infected" and result.signature is not None
    # Each memory file is gone once its answer is in.
    assert _memfds() == before
    with pytest.raises(ScannerUnavailableError):
        infected.result()  # one verdict per file


def test_more_than_announced_is_abandoned(clamd_client: ClamdClient) -> None:
    scan = FdScan(clamd_client, max_bytes=1000)
    assert scan.feed(b"x" * 1000)
    assert scan.feed(b"y") is False  # the cap is the declared length
    assert scan.failed == "over_limit"
    with pytest.raises(ScannerUnavailableError, match="abandoned"):
        scan.result()


def test_abandoned_scan_has_no_verdict_and_frees_the_file(clamd_client: ClamdClient) -> None:
    before = _memfds()
    scan = FdScan(clamd_client, max_bytes=1 << 20)
    scan.feed(eicar_bytes())
    assert len(_memfds()) == len(before) + 1
    scan.abandon("cancelled")
    assert _memfds() == before
    assert scan.feed(b"more") is False
    with pytest.raises(ScannerUnavailableError, match="abandoned"):
        scan.result()


def test_stopped_or_paused_clamd_gives_no_verdict(
        private_clamd: Callable[..., ClamdProcess]) -> None:
    proc = private_clamd()
    assert proc.address is not None
    client = ClamdClient(proc.address, timeout=1.0)
    proc.pause()  # connections are accepted, nothing is answered
    try:
        scan = FdScan(client, max_bytes=1 << 20)
        assert scan.feed(b"harmless")  # never waits for clamd
        with pytest.raises(ScannerUnavailableError):
            scan.result()  # bounded by the client's timeout
    finally:
        proc.resume()
    again = FdScan(client, max_bytes=1 << 20)
    again.feed(eicar_bytes())
    assert again.result().verdict == "infected"
    proc.stop()
    gone = FdScan(client, max_bytes=1 << 20)
    gone.feed(b"harmless")
    with pytest.raises(ScannerUnavailableError):
        gone.result()


def test_clamd_limits_still_hold(private_clamd: Callable[..., ClamdProcess]) -> None:
    # FILDES skips StreamMaxLength; MaxFileSize / MaxScanSize still apply and, with
    # AlertExceedsMax, a file past them is refused, never clean.
    proc = private_clamd(max_bytes=1 << 20)
    assert proc.address is not None
    scan = FdScan(ClamdClient(proc.address, timeout=30), max_bytes=64 << 20)
    assert feed_in_chunks(scan, os.urandom(40 << 20), chunk=64 << 10)
    result = scan.result()
    assert result.verdict == "refused" and result.reason == "scan_limits", result
