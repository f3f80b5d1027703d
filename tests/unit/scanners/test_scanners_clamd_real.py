"""Tests against a real clamd started by the suite on the shipped test signature.

What ClamAV 1.4.6 actually answers (recorded here, asserted below):
* password-protected zip entry -> ``stream: Heuristics.Encrypted.Zip FOUND`` (refused/encrypted)
* stream over StreamMaxLength -> ``INSTREAM size limit exceeded. ERROR`` and clamd closes
  the connection -> ScannerUnavailableError
* many entries above MaxScanSize -> ``Heuristics.Limits.Exceeded.MaxScanSize`` (refused)
* zip entry above MaxFileSize -> silently truncated, ``stream: OK`` (!) -- hence the
  ``max_entry_size`` rule in scanners.filetypes
* SIGSTOPped clamd -> connect succeeds (kernel backlog), read/send times out ->
  ScannerUnavailableError after the client timeout
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _scanners_helpers import eicar_bytes, make_xlsx, make_zip, zipcrypto_flagged_zip

from scanners import ScannerError, ScannerUnavailableError
from scanners.clamd import ClamdClient
from scanners.clamd_process import ClamdProcess
from scanners.limits import clamd_limits

pytestmark = pytest.mark.clamd


def test_ping_and_version(clamd_client: ClamdClient, clamd_process: ClamdProcess) -> None:
    assert clamd_client.ping() is True
    assert clamd_client.version().startswith("ClamAV 1.")
    assert clamd_process.signature_info is not None
    assert clamd_process.signature_info.official is False
    assert clamd_process.signature_info.files == ["kinko-eicar.ndb"]


def test_socket_is_private(clamd_process: ClamdProcess) -> None:
    assert clamd_process.address is not None
    mode = os.stat(clamd_process.address.removeprefix("unix://")).st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_clean_bytes(clamd_client: ClamdClient) -> None:
    result = clamd_client.scan_bytes(b"name,number\nYamada,123456789018\n")
    assert result.verdict == "clean"
    assert result.signature is None and result.reason is None


def test_clean_xlsx(clamd_client: ClamdClient) -> None:
    assert clamd_client.scan_bytes(make_xlsx()).verdict == "clean"


def test_eicar_infected(clamd_client: ClamdClient) -> None:
    result = clamd_client.scan_bytes(b"prefix " + eicar_bytes() + b" suffix")
    assert result.verdict == "infected"
    assert result.reason == "malware"
    assert result.signature is not None and result.signature.startswith("Kinko.Test.EICAR")


def test_eicar_in_chunks_across_boundaries(clamd_process: ClamdProcess) -> None:
    assert clamd_process.address is not None
    data = b"a" * 100 + eicar_bytes() + b"b" * 100
    client = ClamdClient(clamd_process.address, timeout=30, chunk_size=7)
    assert client.scan_stream([data[:130], data[130:]]).verdict == "infected"


def test_eicar_in_zip(clamd_client: ClamdClient) -> None:
    data = make_zip([("readme.txt", b"hello"), ("dir/e.txt", b"x" * 5000 + eicar_bytes())])
    assert clamd_client.scan_bytes(data).verdict == "infected"


def test_eicar_in_xlsx(clamd_client: ClamdClient) -> None:
    data = make_xlsx(extra=[("xl/media/image1.bin", eicar_bytes())])
    assert clamd_client.scan_bytes(data).verdict == "infected"


def test_encrypted_zip_is_refused(clamd_client: ClamdClient) -> None:
    result = clamd_client.scan_bytes(zipcrypto_flagged_zip())
    assert result.verdict == "refused"
    assert result.reason == "encrypted"
    assert result.signature == "Heuristics.Encrypted.Zip"


def test_over_max_scan_size_is_refused(private_clamd: Callable[..., ClamdProcess]) -> None:
    proc = private_clamd(max_bytes=1 << 20)
    limits = clamd_limits(1 << 20)
    assert proc.address is not None
    # Highly compressible entries, each under MaxFileSize: small stream, large scan size.
    entries = [(f"z{i}.bin", bytes([i]) * (limits.max_file_size - 1)) for i in range(3)]
    data = make_zip(entries)
    assert len(data) < limits.stream_max_length
    result = ClamdClient(proc.address, timeout=60).scan_bytes(data)
    assert result.verdict == "refused"
    assert result.reason == "scan_limits"
    assert result.signature == "Heuristics.Limits.Exceeded.MaxScanSize"


def test_over_stream_max_length_is_never_clean(
    private_clamd: Callable[..., ClamdProcess],
) -> None:
    proc = private_clamd(max_bytes=1 << 20)
    assert proc.address is not None
    client = ClamdClient(proc.address, timeout=30, chunk_size=64 * 1024)
    with pytest.raises(ScannerUnavailableError, match="size limit exceeded"):
        client.scan_bytes(os.urandom(3 << 20))
    assert client.ping() is True  # clamd itself survives


def test_paused_clamd_times_out_then_recovers(
    private_clamd: Callable[..., ClamdProcess],
) -> None:
    proc = private_clamd()
    assert proc.address is not None
    client = ClamdClient(proc.address, timeout=1.0)
    proc.pause()
    try:
        for payload in (b"small", os.urandom(4 << 20)):
            started = time.monotonic()
            with pytest.raises(ScannerUnavailableError):
                client.scan_bytes(payload)
            assert time.monotonic() - started < 3.0
        assert client.ping() is False
    finally:
        proc.resume()
    assert client.ping() is True
    assert client.scan_bytes(b"hello").verdict == "clean"
    assert client.scan_bytes(eicar_bytes()).verdict == "infected"


def test_stopped_clamd_is_unavailable(private_clamd: Callable[..., ClamdProcess]) -> None:
    proc = private_clamd()
    address = proc.address
    assert address is not None
    client = ClamdClient(address, timeout=2)
    assert client.scan_bytes(b"x").verdict == "clean"
    proc.stop()
    assert proc.address is None
    assert client.ping() is False
    with pytest.raises(ScannerUnavailableError):
        client.scan_bytes(b"x")
    with pytest.raises(ScannerUnavailableError):
        client.version()


def test_long_workdir_gets_short_socket_and_tmpfs_spool(
    tmp_path: Path, no_official_dir: Path
) -> None:
    workdir = tmp_path / ("d" * 60) / ("e" * 60)
    proc = ClamdProcess(workdir, max_bytes=1 << 20, official_dir=no_official_dir)
    with proc:
        assert proc.address is not None
        sock = Path(proc.address.removeprefix("unix://"))
        assert len(str(sock)) < 100
        conf = (workdir / "clamd.conf").read_text()
        temp_line = next(ln for ln in conf.splitlines() if ln.startswith("TemporaryDirectory "))
        spool = Path(temp_line.split(" ", 1)[1])
        assert str(spool).startswith("/dev/shm/kinko-clamd-")
        assert stat.S_IMODE(spool.stat().st_mode) == 0o700
        assert ClamdClient(proc.address, timeout=10).scan_bytes(eicar_bytes()).verdict == (
            "infected"
        )
    assert not spool.exists()
    assert not sock.parent.exists()


def test_start_failure_reports_log(tmp_path: Path, no_official_dir: Path) -> None:
    bad = tmp_path / "bad-clamd"
    bad.write_text("#!/bin/sh\necho 'ERROR: simulated clamd failure' >&2\nexit 3\n")
    bad.chmod(0o755)
    proc = ClamdProcess(
        tmp_path / "w", max_bytes=1 << 20, clamd_binary=str(bad), official_dir=no_official_dir
    )
    with pytest.raises(ScannerError, match="simulated clamd failure"):
        proc.start(timeout=10)
    assert proc.address is None


def test_entry_over_max_file_size_is_truncated_by_clamd_but_refused_by_policy(
    private_clamd: Callable[..., ClamdProcess],
) -> None:
    """ClamAV scans only the first MaxFileSize bytes of an archive entry and says OK;
    scanners.filetypes must refuse such archives so the gap is closed."""
    import io

    from scanners.filetypes import check_file

    max_bytes = 1 << 20
    proc = private_clamd(max_bytes=max_bytes)
    assert proc.address is not None
    hidden_at = clamd_limits(max_bytes).max_file_size + 1024
    data = make_zip([("z.bin", b"\0" * hidden_at + eicar_bytes())])
    result = ClamdClient(proc.address, timeout=60).scan_bytes(data)
    assert result.verdict in ("clean", "refused", "infected")  # 1.4.6 answers "clean"
    verdict = check_file(io.BytesIO(data), "book.xlsx", len(data), max_entry_size=hidden_at)
    assert verdict.reason == "archive_limits"
    verdict = check_file(io.BytesIO(data), "book.xlsx", len(data))
    assert verdict.reason == "archive_limits"
