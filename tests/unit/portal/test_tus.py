"""portal/tus.py in process, with the real local storage and SQLite: parts are
ciphertext, the offset moves by compare-and-set, a short body keeps its
prefix, assembly is exactly-once and survives a crash at each step, and the
housekeeping expires, finishes and sweeps what requests left behind."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

import portal.tus as tus
from portal.instance import init_instance
from portal.models import AuditEvent, ClientUser, Company, TusPart, TusUpload, Upload, utcnow
from portal.services import Services, build_services
from portal.settings import Settings
from storage.base import put_bytes


class Crash(BaseException):
    """Stands for a SIGKILL at a checkpoint: no except/finally of ours runs."""


@pytest.fixture
def svc(tmp_path: Path) -> Services:
    settings = Settings.from_env({"KINKO_HOME": str(tmp_path / "home"),
                                  "KINKO_CLAMD": "unix:///nonexistent.sock",
                                  "KINKO_MAX_UPLOAD_BYTES": str(8 << 20)})
    init_instance(settings)
    services = build_services(settings, "worker")
    with services.sessions() as db, db.begin():
        for code in ("acme", "beta"):
            company = Company(code=code, name=code)
            db.add(company)
            db.flush()
            db.add(ClientUser(company_id=company.id, login="hr", password_hash="x"))
    return services


def user(svc: Services, code: str = "acme") -> ClientUser:
    with svc.sessions() as db:
        return db.execute(select(ClientUser).join(Company).where(Company.code == code)
                          ).scalar_one()


@pytest.fixture
def crash_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    names: list[str] = []

    def checkpoint(name: str) -> None:
        if name in names:
            raise Crash(name)

    monkeypatch.setattr(tus, "checkpoint", checkpoint)
    yield names


def new(svc: Services, data: bytes, code: str = "acme") -> str:
    return tus.create(svc, user(svc, code), length=len(data), filename="給与.csv",
                      purpose_code="koyo", remote_addr="127.0.0.1").id


def patch(svc: Services, tus_id: str, offset: int, body: bytes,
          declared: int | None = None) -> tus.State:
    return tus.append(svc, user(svc), tus_id, offset=offset, stream=io.BytesIO(body),
                      content_length=len(body) if declared is None else declared,
                      remote_addr="127.0.0.1")


def row(svc: Services, tus_id: str) -> TusUpload | None:
    with svc.sessions() as db:
        return db.get(TusUpload, tus_id)


def parts(svc: Services, tus_id: str) -> list[str]:
    return sorted(svc.dropzone.keys(f"tus/{tus_id}/"))


def data_of(size: int) -> bytes:
    line = b"name,value," + os.urandom(8).hex().encode() + b"\n"
    return (line * (size // len(line) + 1))[:size]


def test_parts_are_sealed_and_assembly_gives_an_ordinary_upload(svc: Services) -> None:
    data = data_of(300_000)
    tus_id = new(svc, data)
    assert patch(svc, tus_id, 0, data[:100_000]).offset == 100_000
    keys = parts(svc, tus_id)
    assert len(keys) == 1
    raw = svc.dropzone.open(keys[0]).read()
    assert raw.startswith(b"KINKOENC") and data[:32] not in raw
    state = patch(svc, tus_id, 100_000, data[100_000:])
    assert state.offset == len(data) and state.upload_id is not None
    with svc.sessions() as db:
        upload = db.get(Upload, state.upload_id)
        assert upload is not None
        assert upload.size == len(data)
        assert upload.sha256 == hashlib.sha256(data).hexdigest()
        assert upload.filename == "給与.csv" and upload.status == "received"
        assert db.execute(select(TusPart)).scalars().all() == []
    assert parts(svc, tus_id) == []


def test_offset_is_compare_and_set(svc: Services) -> None:
    data = data_of(50_000)
    tus_id = new(svc, data)
    patch(svc, tus_id, 0, data[:10_000])
    with pytest.raises(tus.TusError) as exc:
        patch(svc, tus_id, 0, data[:10_000])
    assert (exc.value.code, exc.value.status) == ("offset_mismatch", 409)
    with pytest.raises(tus.TusError) as exc:
        patch(svc, tus_id, 10_000, data[10_000:] + b"x")
    assert (exc.value.code, exc.value.status) == ("exceeds_length", 413)
    r = row(svc, tus_id)
    assert r is not None and (r.offset, r.parts, r.received) == (10_000, 1, 10_000)


def test_a_losing_patch_deletes_only_its_own_part(svc: Services,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Two PATCHes at the same offset: the second one's part is written
    while the first commits; its compare-and-set fails and only its own
    object goes."""
    data = data_of(40_000)
    tus_id = new(svc, data)
    real = tus._store_part

    def racing(services: Services, key: str, stream: Any, want: int, *, chunked: bool) -> int:
        monkeypatch.setattr(tus, "_store_part", real)
        patch(svc, tus_id, 0, data[:15_000])  # the other request wins meanwhile
        return real(services, key, stream, want, chunked=chunked)

    monkeypatch.setattr(tus, "_store_part", racing)
    with pytest.raises(tus.TusError) as exc:
        patch(svc, tus_id, 0, data[:20_000])
    assert exc.value.code == "offset_mismatch"
    r = row(svc, tus_id)
    assert r is not None and r.offset == 15_000 and r.received == 35_000
    assert len(parts(svc, tus_id)) == 1
    with svc.sessions() as db:
        (only,) = db.execute(select(TusPart)).scalars().all()
    assert only.size == 15_000 and parts(svc, tus_id) == [only.key]


def test_a_short_body_keeps_its_prefix(svc: Services) -> None:
    data = data_of(30_000)
    tus_id = new(svc, data)
    # Content-Length said 20 000, the connection ended after 7 000.
    assert patch(svc, tus_id, 0, data[:7_000], declared=20_000).offset == 7_000
    assert patch(svc, tus_id, 7_000, b"", declared=20_000).offset == 7_000  # nothing came
    state = patch(svc, tus_id, 7_000, data[7_000:])
    assert state.upload_id is not None
    with svc.sessions() as db:
        upload = db.get(Upload, state.upload_id)
        assert upload is not None and upload.sha256 == hashlib.sha256(data).hexdigest()


def terminate(svc: Services, tus_id: str) -> None:
    tus.terminate(svc, user(svc), tus_id, "127.0.0.1")


class _Held(io.RawIOBase):
    """A PATCH body whose first read gives half of it; the next waits for
    ``go`` and ends there, as when the browser aborts the request."""

    def __init__(self, data: bytes) -> None:
        self.data, self.first = data, True
        self.go = threading.Event()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if not self.first:
            assert self.go.wait(30)
            return b""  # the connection is gone: the body ends early
        self.first = False
        return self.data[:len(self.data) // 2]


@pytest.mark.parametrize("when", ["before_listing", "after_listing"])
def test_a_patch_racing_the_termination_leaves_nothing(
        svc: Services, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """The browser aborts a PATCH and sends DELETE: both requests run at once,
    and the PATCH, already past its checks, stores what arrived and tries to
    commit it while the termination runs.  Nothing of the upload is left."""
    data = data_of(60_000)
    tus_id = new(svc, data)
    patch(svc, tus_id, 0, data[:20_000])
    body = _Held(data[20_000:35_000])
    outcome: list[object] = []

    def in_flight() -> None:
        try:
            outcome.append(tus.append(svc, user(svc), tus_id, offset=20_000, stream=body,
                                      content_length=15_000, remote_addr="127.0.0.1"))
        except tus.TusError as exc:
            outcome.append(exc.code)

    thread = threading.Thread(target=in_flight)
    thread.start()
    while body.first:  # its first read: the checks are behind it
        time.sleep(0.01)
    real_keys = svc.dropzone.keys

    def racing(prefix: str = "") -> Any:
        listing = list(real_keys(prefix)) if when == "after_listing" else None
        body.go.set()  # the PATCH ends now and commits (or tries to)
        thread.join(30)
        return iter(listing if listing is not None else list(real_keys(prefix)))

    monkeypatch.setattr(svc.dropzone, "keys", racing)
    terminate(svc, tus_id)
    assert not thread.is_alive() and outcome == ["offset_mismatch"], outcome
    assert row(svc, tus_id) is None and parts(svc, tus_id) == []
    with svc.sessions() as db:
        assert db.execute(select(TusPart)).scalars().all() == []
    assert tus.housekeeping(svc).orphans == []


def test_a_crash_during_termination_is_swept(svc: Services, crash_at: list[str]) -> None:
    data = data_of(30_000)
    tus_id = new(svc, data)
    patch(svc, tus_id, 0, data[:10_000])
    patch(svc, tus_id, 10_000, data[10_000:20_000])
    crash_at.append("tus:terminated")
    with pytest.raises(Crash):
        terminate(svc, tus_id)
    crash_at.clear()
    # The row is gone (the client's DELETE counts); its parts are not yet.
    assert row(svc, tus_id) is None and len(parts(svc, tus_id)) == 2
    with pytest.raises(tus.TusError) as exc:
        patch(svc, tus_id, 20_000, data[20_000:])
    assert exc.value.code == "not_found"
    report = tus.housekeeping(svc)
    assert sorted(report.orphans) == sorted(p for p in report.orphans
                                            if p.startswith(f"tus/{tus_id}/"))
    assert len(report.orphans) == 2 and parts(svc, tus_id) == []


def test_creation_refusals_and_isolation(svc: Services) -> None:
    u = user(svc)
    for length, name, purpose, code, status in (
            (0, "a.csv", "koyo", "empty", 400), ((8 << 20) + 1, "a.csv", "koyo", "too_large", 413),
            (10, " ", "koyo", "bad_filename", 400), (10, "a.csv", "nope", "invalid_purpose", 400)):
        with pytest.raises(tus.TusError) as exc:
            tus.create(svc, u, length=length, filename=name, purpose_code=purpose,
                       remote_addr=None)
        assert (exc.value.code, exc.value.status) == (code, status)
    tus_id = new(svc, b"abc")
    beta = user(svc, "beta")
    for call in (lambda: tus.lookup(svc, beta.company_id, tus_id),
                 lambda: tus.terminate(svc, beta, tus_id, None),
                 lambda: tus.append(svc, beta, tus_id, offset=0, stream=io.BytesIO(b"abc"),
                                    content_length=3, remote_addr=None),
                 lambda: tus.lookup(svc, beta.company_id, "../../x")):
        with pytest.raises(tus.TusError) as exc:
            call()
        assert exc.value.status == 404
    assert row(svc, tus_id) is not None


@pytest.mark.parametrize("step", ["tus:assembled", "tus:registered"])
def test_a_crash_during_assembly_is_repaired(svc: Services, crash_at: list[str],
                                             step: str) -> None:
    data = data_of(20_000)
    tus_id = new(svc, data)
    patch(svc, tus_id, 0, data[:9_000])
    crash_at.append(step)
    with pytest.raises(Crash):
        patch(svc, tus_id, 9_000, data[9_000:])
    crash_at.clear()
    r = row(svc, tus_id)
    assert r is not None and r.offset == len(data)
    with svc.sessions() as db:
        uploads = db.execute(select(Upload)).scalars().all()
    if step == "tus:assembled":
        # Object committed, no row: the tus upload is complete, not visible.
        assert r.upload_id is None and uploads == []
        # Idle long enough: the reconciler's housekeeping finishes it.
        later = utcnow() + tus.FINISH_AFTER + timedelta(seconds=1)
        report = tus.housekeeping(svc, now=lambda: later)
        assert report.finished == [tus_id]
    else:
        assert r.upload_id is not None and len(uploads) == 1
        assert len(parts(svc, tus_id)) == 2  # left behind by the crash
        tus.housekeeping(svc)
    r = row(svc, tus_id)
    assert r is not None and r.upload_id is not None
    assert parts(svc, tus_id) == []
    with svc.sessions() as db:
        (upload,) = db.execute(select(Upload)).scalars().all()
    assert upload.id == r.upload_id and upload.sha256 == hashlib.sha256(data).hexdigest()


def test_assembly_is_exactly_once(svc: Services, crash_at: list[str]) -> None:
    data = data_of(10_000)
    tus_id = new(svc, data)
    crash_at.append("tus:assembled")
    with pytest.raises(Crash):
        patch(svc, tus_id, 0, data)
    crash_at.clear()
    first = tus.finish(svc, tus_id)
    second = tus.finish(svc, tus_id)
    assert first is not None and first == second
    # An empty PATCH at the end (a client whose answer was lost) changes nothing.
    assert patch(svc, tus_id, len(data), b"").upload_id == first
    with svc.sessions() as db:
        assert len(db.execute(select(Upload)).scalars().all()) == 1
        actions = db.execute(select(AuditEvent.action)).scalars().all()
    assert actions.count("client:tus:completed") == 1
    assert actions.count("client:upload:received") == 1


def test_damaged_part_is_not_assembled(svc: Services) -> None:
    data = data_of(20_000)
    tus_id = new(svc, data)
    patch(svc, tus_id, 0, data[:10_000])
    (key,) = parts(svc, tus_id)
    raw = bytearray(svc.dropzone.open(key).read())
    raw[-5] ^= 1
    put_bytes(svc.dropzone, key, bytes(raw))
    with pytest.raises(tus.TusError) as exc:
        patch(svc, tus_id, 10_000, data[10_000:])
    assert (exc.value.code, exc.value.status) == ("damaged", 422)
    with svc.sessions() as db:
        assert db.execute(select(Upload)).scalars().all() == []
    assert list(svc.dropzone.keys("dz/")) == []  # the half-assembled object was discarded
    assert row(svc, tus_id) is None and parts(svc, tus_id) == []  # start again


def test_expiry_and_orphans(svc: Services) -> None:
    data = data_of(20_000)
    tus_id = new(svc, data)
    patch(svc, tus_id, 0, data[:5_000])
    other = new(svc, data)
    # A part written but never committed (a crash before the offset moved).
    put_bytes(svc.dropzone, f"tus/{other}/000000000000-deadbeef", b"x", {"created": "0"})
    fresh = f"tus/{other}/000000000000-0badcafe"
    put_bytes(svc.dropzone, fresh, b"x", {"created": str(int(utcnow().timestamp()))})
    with svc.sessions() as db, db.begin():
        db.execute(update(TusUpload).where(TusUpload.id == tus_id)
                   .values(expires_at=utcnow() - timedelta(seconds=1)))
    with pytest.raises(tus.TusError) as exc:
        tus.lookup(svc, user(svc).company_id, tus_id)
    assert (exc.value.code, exc.value.status) == ("expired", 410)
    report = tus.housekeeping(svc)
    assert report.expired == [tus_id]
    assert report.orphans == [f"tus/{other}/000000000000-deadbeef"]
    assert row(svc, tus_id) is None and parts(svc, tus_id) == []
    assert parts(svc, other) == [fresh]  # young: its PATCH may still commit
    with svc.sessions() as db:
        details = db.execute(select(AuditEvent.details)
                             .where(AuditEvent.action == "system:tus:expired")).scalars().all()
    assert len(details) == 1 and tus_id in details[0] and "給与" not in details[0]


def test_too_many_parts(svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tus, "MAX_PARTS", 3)
    data = data_of(100)
    tus_id = new(svc, data)
    for i in range(3):
        patch(svc, tus_id, i * 10, data[i * 10:i * 10 + 10])
    with pytest.raises(tus.TusError) as exc:
        patch(svc, tus_id, 30, data[30:])
    assert exc.value.code == "too_many_parts"


class _Lazy:
    """A request body that makes its bytes as they are read (nothing held)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int) -> bytes:
        n = min(n, self.left)
        self.left -= n
        return b"7," * (n // 2) + b"\n" * (n % 2)


def test_memory_stays_flat(svc: Services) -> None:
    """An 8 MiB PATCH and the assembly that follows hold about one read
    buffer at a time, never the chunk or the file."""
    import tracemalloc

    size = 8 << 20
    tus_id = tus.create(svc, user(svc), length=size, filename="big.csv", purpose_code="koyo",
                        remote_addr=None).id
    tracemalloc.start()
    try:
        state = tus.append(svc, user(svc), tus_id, offset=0, stream=_Lazy(size),
                           content_length=size, remote_addr=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert state.upload_id is not None
    # About 3.7 MB measured (a few 1 MiB read buffers); holding the 8 MiB
    # chunk or the file would go over.
    assert peak < 6 << 20, peak


def test_a_full_drop_zone_keeps_the_offset(svc: Services,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC in the middle of a part: 507, nothing committed, the offset
    stands, and the same PATCH succeeds once there is room again."""
    import contextlib
    import errno

    from portal.intake import IntakeError

    data = data_of(3 << 20)
    tus_id = new(svc, data)
    real_writer = svc.dropzone.writer

    @contextlib.contextmanager
    def full(key: str, metadata: Any = None) -> Iterator[Any]:
        with real_writer(key, metadata) as inner:
            class Sink:
                written = 0

                def write(self, blob: Any) -> int:
                    if self.written > (1 << 20):
                        raise OSError(errno.ENOSPC, "No space left on device")
                    self.written += len(blob)
                    return int(inner.write(blob))
            yield Sink()

    monkeypatch.setattr(svc.dropzone, "writer", full)
    with pytest.raises(IntakeError) as exc:
        patch(svc, tus_id, 0, data)
    assert (exc.value.code, exc.value.status) == ("storage_full", 507)
    monkeypatch.setattr(svc.dropzone, "writer", real_writer)
    r = row(svc, tus_id)
    assert r is not None and (r.offset, r.parts) == (0, 0)
    assert parts(svc, tus_id) == []
    assert patch(svc, tus_id, 0, data).upload_id is not None
