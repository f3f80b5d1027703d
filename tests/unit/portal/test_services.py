"""What each role's process may touch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from portal.instance import init_instance
from portal.services import build_services
from portal.settings import Settings


def test_the_client_role_has_no_vault_at_all(tmp_path: Path) -> None:
    settings = Settings.from_env({"KINKO_HOME": str(tmp_path)})
    init_instance(settings)
    client = build_services(settings, "client")
    assert client.vault_private is None
    with pytest.raises(PermissionError):
        client.vault.open("vault/x")
    with pytest.raises(PermissionError):
        client.vault.writer("vault/x")
    worker = build_services(settings, "worker")
    assert worker.vault_private is None and not worker.vault.exists("vault/x")
    assert build_services(settings, "office").vault_private is not None


def test_local_backends_do_not_load_boto3() -> None:
    # Memory of the web process is measured (bench/memory.py); boto3 is ~10 MB.
    # A fresh interpreter: other tests in this process load boto3 themselves.
    code = ("import sys, portal.client, portal.office, portal.worker, storage; "
            "print('boto3' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.strip() == "False"
    from storage import S3Storage  # the lazy export still works
    assert S3Storage.__name__ == "S3Storage"


def test_scanner_health_warns_on_stale_or_test_signatures() -> None:
    from datetime import UTC, datetime, timedelta

    from portal.status import ScannerHealth, parse_version

    engine, db, date = parse_version("ClamAV 1.4.6/27490/Mon Nov 23 09:00:00 2026")
    assert (engine, db) == ("ClamAV 1.4.6", "27490") and date is not None
    assert parse_version("ClamAV 1.4.6")[1] is None  # no database version: test signature only
    now = datetime.now(UTC)
    fresh = ScannerHealth(True, engine, db, now - timedelta(days=1), True, now)
    stale = ScannerHealth(True, engine, db, now - timedelta(days=4), True, now)
    test_only = ScannerHealth(True, engine, None, None, False, now)
    down = ScannerHealth(False, None, None, None, True, now)
    assert fresh.warnings == []
    assert stale.warnings == ["signatures_stale"]
    assert test_only.warnings == ["test_signatures_only"]
    assert "unreachable" in down.warnings
