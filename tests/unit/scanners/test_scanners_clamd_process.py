"""write_config / prepare_database / limits (no clamd needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scanners.clamd_process import SignatureInfo, prepare_database, write_config
from scanners.limits import MAX_FILE, MAX_STREAM, clamd_limits


def _directives(text: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            assert key not in result, f"duplicate {key}"
            result[key] = value
    return result


def _write(tmp_path: Path, max_bytes: int) -> dict[str, str]:
    path = write_config(
        tmp_path / "clamd.conf",
        socket_path=tmp_path / "clamd.sock",
        database_dir=tmp_path / "db",
        temp_dir="/dev/shm/kinko-x",
        max_bytes=max_bytes,
        pid_file=tmp_path / "clamd.pid",
    )
    assert path.stat().st_mode & 0o077 == 0
    return _directives(path.read_text())


def test_config_security_options(tmp_path: Path) -> None:
    conf = _write(tmp_path, 100 << 20)
    assert "User" not in conf
    expected = {
        "LocalSocket": str(tmp_path / "clamd.sock"),
        "LocalSocketMode": "600",
        "Foreground": "yes",
        "DatabaseDirectory": str(tmp_path / "db"),
        "TemporaryDirectory": "/dev/shm/kinko-x",
        "AlertExceedsMax": "yes",
        "AlertEncrypted": "yes",
        "AlertEncryptedArchive": "yes",
        "AlertEncryptedDoc": "yes",
        "ExitOnOOM": "yes",
        "LogTime": "yes",
        "LogSyslog": "no",
        "LogFile": str(tmp_path / "clamd.log"),
        "MaxScanTime": "120000",
        "PidFile": str(tmp_path / "clamd.pid"),
    }
    for key, value in expected.items():
        assert conf[key] == value, key
    assert int(conf["SelfCheck"]) > 0


@pytest.mark.parametrize("max_bytes", [1, 1 << 20, 100 << 20, 1 << 30, 1900 << 20])
def test_config_limits_cover_max_bytes(tmp_path: Path, max_bytes: int) -> None:
    conf = _write(tmp_path, max_bytes)
    stream = int(conf["StreamMaxLength"])
    assert max_bytes < stream <= MAX_FILE
    assert stream <= int(conf["MaxFileSize"]) <= MAX_FILE
    assert int(conf["MaxFileSize"]) <= int(conf["MaxScanSize"]) <= MAX_STREAM


def test_limits_monotonic() -> None:
    previous = clamd_limits(1)
    for size in range(1, 1900 << 20, 7 << 20):
        current = clamd_limits(size)
        assert current.max_file_size >= previous.max_file_size
        previous = current


@pytest.mark.parametrize("max_bytes", [0, -1, 2 << 30, 5 << 30])
def test_config_rejects_impossible_limits(tmp_path: Path, max_bytes: int) -> None:
    with pytest.raises(ValueError):
        _write(tmp_path, max_bytes)


def test_config_rejects_whitespace_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_config(
            tmp_path / "clamd.conf",
            socket_path=tmp_path / "a b.sock",
            database_dir=tmp_path / "db",
            temp_dir=tmp_path,
            max_bytes=1 << 20,
            pid_file=tmp_path / "pid",
        )
    with pytest.raises(ValueError):
        write_config(
            tmp_path / "clamd.conf",
            socket_path=tmp_path / "s.sock",
            database_dir=tmp_path / "db\nUser root",
            temp_dir=tmp_path,
            max_bytes=1 << 20,
            pid_file=tmp_path / "pid",
        )


def test_prepare_database_test_signature(tmp_path: Path) -> None:
    db = tmp_path / "db"
    db.mkdir()
    (db / "stale.cvd").write_bytes(b"old")
    info = prepare_database(db, official_dir=tmp_path / "none")
    assert info == SignatureInfo(official=False, files=["kinko-eicar.ndb"])
    assert sorted(p.name for p in db.iterdir()) == ["kinko-eicar.ndb"]
    line = (db / "kinko-eicar.ndb").read_text().strip()
    name, target, offset, hexsig = line.split(":")
    assert (name, target, offset) == ("Kinko.Test.EICAR", "0", "*")
    assert b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE" in bytes.fromhex(hexsig)


def test_prepare_database_official(tmp_path: Path) -> None:
    official = tmp_path / "official"
    official.mkdir()
    for name in ("main.cvd", "daily.cld", "bytecode.cvd", "freshclam.dat"):
        (official / name).write_bytes(b"sig-" + name.encode())
    db = tmp_path / "db"
    info = prepare_database(db, official_dir=official)
    assert info.official is True
    assert info.files == ["bytecode.cvd", "daily.cld", "main.cvd"]
    assert sorted(p.name for p in db.iterdir()) == info.files
    assert (db / "main.cvd").read_bytes() == b"sig-main.cvd"
    # Switching back to no official DB removes them again (no stale signatures).
    info = prepare_database(db, official_dir=tmp_path / "none")
    assert info.official is False
    assert sorted(p.name for p in db.iterdir()) == ["kinko-eicar.ndb"]
