"""StreamScan (scanning while receiving) against a real clamd: the same verdicts as
``scan_stream``, never a blocked feeder, and never clean unless the whole stream went."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from _scanners_helpers import eicar_bytes, feed_in_chunks

from scanners import ScannerUnavailableError
from scanners.clamd import ClamdClient, StreamScan
from scanners.clamd_process import ClamdProcess

pytestmark = pytest.mark.clamd




def test_clean_and_infected_like_scan_stream(clamd_client: ClamdClient) -> None:
    # Fed from memory, faster than clamd takes it: the feeder waits for clamd.
    clean = StreamScan(clamd_client, max_pending=256 << 10, stall=30)
    assert feed_in_chunks(clean, os.urandom(24 << 20), chunk=100_000)
    assert clean.result().verdict == "clean"

    clean = StreamScan(clamd_client, max_pending=64 << 20)
    assert feed_in_chunks(clean, os.urandom(3 << 20), chunk=100_000)
    assert clean.result().verdict == "clean"

    infected = StreamScan(clamd_client, max_pending=64 << 20)
    data = os.urandom(300_000) + eicar_bytes() + os.urandom(300_000)
    assert feed_in_chunks(infected, data, chunk=7_000)  # the signature spans several chunks
    result = infected.result()
    assert result.verdict == "infected" and result.signature is not None
    assert infected.sent == len(data)


def test_abandoned_stream_has_no_verdict(clamd_client: ClamdClient) -> None:
    stream = StreamScan(clamd_client)
    stream.feed(b"harmless")
    stream.abandon("cancelled")
    assert stream.feed(b"more") is False
    with pytest.raises(ScannerUnavailableError, match="abandoned"):
        stream.result()


def test_over_stream_max_length_is_never_clean(
        private_clamd: Callable[..., ClamdProcess]) -> None:
    proc = private_clamd(max_bytes=1 << 20)
    assert proc.address is not None
    stream = StreamScan(ClamdClient(proc.address, timeout=10), max_pending=64 << 20)
    feed_in_chunks(stream, os.urandom(4 << 20))
    with pytest.raises(ScannerUnavailableError):
        stream.result()


def test_paused_clamd_never_blocks_the_feeder(
        private_clamd: Callable[..., ClamdProcess]) -> None:
    proc = private_clamd()
    assert proc.address is not None
    client = ClamdClient(proc.address, timeout=1.0)
    proc.pause()
    try:
        # Connecting still works (the kernel's backlog); then clamd takes nothing.
        big = StreamScan(client, max_pending=1 << 20)
        assert feed_in_chunks(big, os.urandom(16 << 20)) is False  # returned: it never blocked
        assert big.failed == "backpressure"
        with pytest.raises(ScannerUnavailableError):
            big.result()
        patient = StreamScan(client, max_pending=1 << 20, stall=0.3)
        assert feed_in_chunks(patient, os.urandom(16 << 20)) is False  # waited, then gave up
        assert patient.failed == "backpressure"

        small = StreamScan(client)
        assert small.feed(b"fits in the socket buffer")
        with pytest.raises(ScannerUnavailableError):
            small.result()  # bounded by the client's timeout
    finally:
        proc.resume()
    again = StreamScan(client)
    again.feed(eicar_bytes())
    assert again.result().verdict == "infected"


def test_stopped_clamd_cannot_start_a_stream(
        private_clamd: Callable[..., ClamdProcess]) -> None:
    proc = private_clamd()
    address = proc.address
    assert address is not None
    proc.stop()
    with pytest.raises(ScannerUnavailableError):
        StreamScan(ClamdClient(address, timeout=2))
