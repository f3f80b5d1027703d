"""portal.notices against a real initialised instance and a real SMTP server
(aiosmtpd, started by the test): batching, recipients, client outcomes, and
no file name, size, hash or number in any notice."""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from smtpserver import SmtpServer, text_of
from sqlalchemy import select

from portal import notify
from portal.audit import Tag, verify
from portal.instance import init_instance
from portal.models import (
    AuditEvent,
    ClientUser,
    Company,
    Staff,
    Status,
    Upload,
    UploadEvent,
    utcnow,
)
from portal.notices import (
    FileFacts,
    NoticeRefused,
    check_notice,
    client_text,
    run_notices,
    staff_text,
)
from portal.services import Services, build_services
from portal.settings import Settings

PLANTED = "山田太郎_123456789018.xlsx"
ACME = "株式会社アクメ"
BETA = "ベータ商事株式会社"


@dataclass
class Kinko:
    svc: Services
    smtp: SmtpServer
    acme: int
    beta: int

    @property
    def settings(self) -> Settings:
        return self.svc.settings

    def run(self, now: datetime) -> dict[str, list[str]]:
        """Run the job once; the notices it sent, by recipient (subject + body)."""
        self.smtp.clear()
        sent = run_notices(self.svc, now=now)
        msgs = self.smtp.wait_for(sent) if sent else []
        assert len(msgs) == sent
        out: dict[str, list[str]] = {}
        for m in msgs:
            out.setdefault(str(m["To"]), []).append(text_of(m))
        return out


def make_settings(home: Path, **extra: str) -> Settings:
    return Settings.from_env({"KINKO_HOME": str(home),
                              "KINKO_CLAMD": "unix:///nonexistent/clamd.sock",
                              "KINKO_PUBLIC_URL": "https://kinko.example.jp", **extra})


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
def kinko(tmp_path: Path, smtp: SmtpServer) -> Kinko:
    settings = make_settings(tmp_path / "home", KINKO_SMTP_URL=smtp.url,
                             KINKO_MAIL_FROM="kinko@office.example.jp")
    assert settings.notice_batch_minutes == 5  # the default
    init_instance(settings)
    svc = build_services(settings, "worker")
    with svc.sessions() as db, db.begin():
        acme, beta = Company(code="acme", name=ACME), Company(code="beta", name=BETA)
        db.add_all([acme, beta])
        db.flush()
        db.add_all([
            Staff(login="boss", role="manager", email="boss@office.example.jp",
                  password_hash="x"),
            Staff(login="nomail", role="manager", password_hash="x"),
            Staff(login="gone", role="manager", email="gone@office.example.jp",
                  password_hash="x", active=False),
            Staff(login="hana", role="handler", email="hana@office.example.jp",
                  password_hash="x", companies=[acme]),
            Staff(login="taro", role="handler", email="taro@office.example.jp",
                  password_hash="x", companies=[beta]),
            ClientUser(company_id=acme.id, login="hr", email="hr@acme.example.jp",
                       password_hash="x"),
            ClientUser(company_id=acme.id, login="hr2", password_hash="x"),
            ClientUser(company_id=acme.id, login="old", email="old@acme.example.jp",
                       password_hash="x", active=False),
            ClientUser(company_id=beta.id, login="hr", email="hr@beta.example.jp",
                       password_hash="x"),
        ])
        ids = acme.id, beta.id
    return Kinko(svc, smtp, *ids)


def add_upload(k: Kinko, company_id: int, at: datetime, filename: str = "社員一覧.csv",
               size: int = 48213) -> str:
    upload_id = uuid.uuid4().hex
    with k.svc.sessions() as db, db.begin():
        db.add(Upload(id=upload_id, company_id=company_id, filename=filename,
                      purpose_code="koyo", status=Status.RECEIVED, size=size,
                      sha256=uuid.uuid4().hex + uuid.uuid4().hex, created_at=at))
        db.add(UploadEvent(upload_id=upload_id, status=Status.RECEIVED, at=at))
    return upload_id


def finish(k: Kinko, upload_id: str, status: Status, at: datetime) -> None:
    with k.svc.sessions() as db, db.begin():
        upload = db.get(Upload, upload_id)
        assert upload is not None
        upload.status = status
        db.add(UploadEvent(upload_id=upload_id, status=status, at=at))


def notice_events(k: Kinko) -> list[dict[str, object]]:
    with k.svc.sessions() as db:
        rows = db.execute(select(AuditEvent).where(AuditEvent.action == str(Tag.NOTICE_SENT))
                          .order_by(AuditEvent.id)).scalars().all()
        return [json.loads(r.details) for r in rows]


def t0() -> datetime:
    return utcnow() - timedelta(hours=1)


# -- batching and recipients --------------------------------------------------------


def test_staff_notices_are_batched_per_company(kinko: Kinko) -> None:
    start = t0()
    for minute in (0, 1, 2):
        add_upload(kinko, kinko.acme, start + timedelta(minutes=minute))

    assert kinko.run(start + timedelta(minutes=3)) == {}  # within the window: not yet
    assert kinko.run(start + timedelta(minutes=4, seconds=59)) == {}

    sent = kinko.run(start + timedelta(minutes=5))
    # Managers and the handler assigned to acme; not beta's handler, not the
    # manager without an address, not the disabled one.
    assert sorted(sent) == ["boss@office.example.jp", "hana@office.example.jp"]
    subject, body = staff_text(kinko.settings, ACME, 3)
    for texts in sent.values():
        assert texts == [f"{subject}\n{body}"]
    assert ACME in subject and re.search(r"(?<!\d)3(?!\d)", subject)
    assert notice_events(kinko)[-1] == {"kind": "staff", "company_id": kinko.acme,
                                        "count": 3, "recipients": 2}

    assert kinko.run(start + timedelta(minutes=6)) == {}  # nothing new: nothing sent

    add_upload(kinko, kinko.acme, start + timedelta(minutes=7))
    assert kinko.run(start + timedelta(minutes=8)) == {}
    sent = kinko.run(start + timedelta(minutes=12))
    assert sorted(sent) == ["boss@office.example.jp", "hana@office.example.jp"]
    subject, body = staff_text(kinko.settings, ACME, 1)
    assert sent["boss@office.example.jp"] == [f"{subject}\n{body}"]
    assert notice_events(kinko)[-1]["count"] == 1


def test_handlers_hear_only_of_their_companies(kinko: Kinko) -> None:
    start = t0()
    add_upload(kinko, kinko.acme, start)
    add_upload(kinko, kinko.beta, start)
    add_upload(kinko, kinko.beta, start + timedelta(seconds=30))
    sent = kinko.run(start + timedelta(minutes=10))
    assert sorted(sent) == ["boss@office.example.jp", "hana@office.example.jp",
                            "taro@office.example.jp"]
    assert len(sent["boss@office.example.jp"]) == 2  # one per company
    assert sent["hana@office.example.jp"] == ["\n".join(staff_text(kinko.settings, ACME, 1))]
    assert sent["taro@office.example.jp"] == ["\n".join(staff_text(kinko.settings, BETA, 2))]


def test_batch_window_is_configurable_and_zero_means_at_once(tmp_path: Path) -> None:
    assert make_settings(tmp_path).notice_batch_minutes == 5
    assert make_settings(tmp_path, KINKO_NOTICE_BATCH_MINUTES="15").notice_batch_minutes == 15
    zero = make_settings(tmp_path, KINKO_NOTICE_BATCH_MINUTES="0")
    assert zero.notice_batch_minutes == 0


def test_window_zero_sends_at_the_next_run(kinko: Kinko) -> None:
    kinko.svc.settings = make_settings(kinko.settings.home, KINKO_SMTP_URL=kinko.smtp.url,
                                       KINKO_NOTICE_BATCH_MINUTES="0")
    at = t0()
    add_upload(kinko, kinko.beta, at)
    sent = kinko.run(at)
    assert sorted(sent) == ["boss@office.example.jp", "taro@office.example.jp"]


# -- client notices ------------------------------------------------------------------


def test_client_hears_of_outcomes_in_general_words(kinko: Kinko) -> None:
    start = t0()
    ups = [add_upload(kinko, kinko.acme, start, filename=f"f{i}.csv") for i in range(5)]
    staff_round = kinko.run(start + timedelta(minutes=5))
    assert "hr@acme.example.jp" not in staff_round  # nothing decided yet

    later = start + timedelta(minutes=6)
    finish(kinko, ups[0], Status.VAULTED, later)
    finish(kinko, ups[1], Status.VAULTED, later)
    finish(kinko, ups[2], Status.VAULTED, later)
    finish(kinko, ups[3], Status.INFECTED, later)
    finish(kinko, ups[4], Status.REFUSED, later + timedelta(minutes=1))
    assert kinko.run(later + timedelta(minutes=2)) == {}  # batched like staff notices

    sent = kinko.run(later + timedelta(minutes=5))
    assert sorted(sent) == ["hr@acme.example.jp"]  # not hr2 (no address), not old, not beta
    counts = {Status.VAULTED: 3, Status.INFECTED: 1, Status.REFUSED: 1}
    from collections import Counter
    subject, body = client_text(kinko.settings, ACME, Counter(counts))
    assert sent["hr@acme.example.jp"] == [f"{subject}\n{body}"]
    assert ACME in body and "https://kinko.example.jp/" in body
    last = notice_events(kinko)[-1]
    assert last == {"kind": "client", "company_id": kinko.acme, "count": 5, "vaulted": 3,
                    "rejected": 2, "recipients": 1}
    assert kinko.run(later + timedelta(minutes=30)) == {}


# -- nothing personal in any notice -------------------------------------------------------


def test_a_planted_file_name_never_appears_in_any_notice(kinko: Kinko) -> None:
    start = t0()
    planted = add_upload(kinko, kinko.acme, start, filename=PLANTED, size=123457)
    other = add_upload(kinko, kinko.acme, start, filename="佐藤花子 扶養控除.pdf", size=98765)
    finish(kinko, planted, Status.REFUSED, start + timedelta(minutes=1))
    finish(kinko, other, Status.VAULTED, start + timedelta(minutes=1))
    with kinko.svc.sessions() as db:
        facts = [(u.sha256, u.size) for u in db.execute(select(Upload)).scalars()]
    sent = kinko.run(start + timedelta(minutes=10))
    assert sorted(sent) == ["boss@office.example.jp", "hana@office.example.jp",
                            "hr@acme.example.jp"]
    texts = [t for ts in sent.values() for t in ts]
    raw = [m.as_string() for m in kinko.smtp.messages]
    for text in texts + raw:
        for forbidden in ("山田太郎", "123456789018", PLANTED, "佐藤花子", "扶養控除"):
            assert forbidden not in text
        for sha, size in facts:
            assert sha not in text and sha[:12] not in text
            assert str(size) not in text and f"{size:,}" not in text
        assert not re.search(r"\d{12}", text)
    for t in texts:
        assert ACME in t


def test_check_notice_refuses_names_sizes_hashes_and_numbers() -> None:
    files = [FileFacts(PLANTED, 123457, "ab" * 32)]
    check_notice("株式会社アクメ様から 3 件 https://x:8443/", files)  # fine
    files.append(FileFacts("山田太郎_扶養控除.xlsx", 10, ""))
    for text, what in ((f"{PLANTED}", "twelve_digits"), ("山田太郎_扶養控除 が届きました",
                                                        "file_name"),
                       ("abababababab", "sha256"), ("123,457 bytes", "size"),
                       ("個人番号 1234-5678-9012", "twelve_digits")):
        with pytest.raises(NoticeRefused) as exc:
            check_notice(text, files)
        assert exc.value.what == what, text
    # A stem is checked too; the company name itself may match a file's stem.
    with pytest.raises(NoticeRefused):
        check_notice("社員一覧 3 件", [FileFacts("社員一覧.csv", 10, "")])
    check_notice("アクメ様から 3 件", [FileFacts("アクメ.csv", 10, "")], allowed=["アクメ"])
    # Nor does a file named like the fixed wording of the notice.
    check_notice("3 件のファイルが届きました", [FileFacts("ファイル.csv", 10, "")],
                 boilerplate="件のファイルが届きました")


def test_a_notice_that_would_leak_is_refused_logged_and_not_sent(
        kinko: Kinko, caplog: pytest.LogCaptureFixture) -> None:
    with kinko.svc.sessions() as db, db.begin():
        # A company name with a 12-digit run: the notice must not go out.
        bad = Company(code="bad", name="テスト商会 123456789012")
        db.add(bad)
        db.flush()
        bad_id = bad.id
    start = t0()
    add_upload(kinko, bad_id, start)
    with caplog.at_level(logging.ERROR, logger="portal.notices"):
        sent = kinko.run(start + timedelta(minutes=10))
    assert sent == {}
    assert any("refused" in r.getMessage() for r in caplog.records)
    assert not any("123456789012" in r.getMessage() for r in caplog.records)
    assert notice_events(kinko)[-1] == {"kind": "staff", "company_id": bad_id, "count": 1,
                                        "recipients": 0, "refused": "twelve_digits"}
    assert kinko.run(start + timedelta(minutes=20)) == {}  # refused once, not every minute


# -- exactly once, and the audit chain -----------------------------------------------------


def test_two_workers_at_once_send_each_notice_once(kinko: Kinko) -> None:
    start = t0()
    for i in range(3):
        add_upload(kinko, kinko.acme, start + timedelta(seconds=i))
        add_upload(kinko, kinko.beta, start + timedelta(seconds=i))
    others = [build_services(kinko.settings, "worker") for _ in range(4)]
    now = start + timedelta(minutes=10)
    barrier = threading.Barrier(len(others))
    results: list[int] = []

    def worker(svc: Services) -> None:
        barrier.wait()
        results.append(run_notices(svc, now=now))

    threads = [threading.Thread(target=worker, args=(s,)) for s in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # acme: boss + hana; beta: boss + taro.
    assert sum(results) == 4
    msgs = kinko.smtp.wait_for(4)
    assert len(msgs) == 4
    assert len([e for e in notice_events(kinko) if e["kind"] == "staff"]) == 2
    with kinko.svc.sessions() as db:
        count, broken = verify(db, kinko.svc.audit_key)
    assert broken is None and count > 0


# -- transport ----------------------------------------------------------------------------


def test_outbox_mode_writes_private_eml_files(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", KINKO_NOTICE_BATCH_MINUTES="0")
    init_instance(settings)
    svc = build_services(settings, "worker")
    with svc.sessions() as db, db.begin():
        c = Company(code="acme", name=ACME)
        db.add(c)
        db.flush()
        db.add(Staff(login="boss", role="manager", email="boss@office.example.jp",
                     password_hash="x"))
        db.add(Upload(id=uuid.uuid4().hex, company_id=c.id, filename=PLANTED,
                      purpose_code="koyo", size=10, sha256="0" * 64))
    assert run_notices(svc) == 1
    files = list(notify.outbox_dir(settings).glob("*.eml"))
    assert len(files) == 1 and files[0].stat().st_mode & 0o777 == 0o600
    raw = files[0].read_bytes().decode()
    assert "boss@office.example.jp" in raw and "山田太郎" not in raw
    assert "123456789018" not in raw


def test_starttls_is_used_when_offered_and_never_falls_back_to_plain_text(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path / "home")
    init_instance(settings)  # writes a self-signed certificate
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    received: list[EmailMessage] = []

    class Handler:
        async def handle_DATA(self, _s, _session, envelope):  # type: ignore[no-untyped-def]  # noqa: N802
            received.append(envelope)
            return "250 OK"

    server = SmtpServer()
    controller = Controller(Handler(), hostname="127.0.0.1", port=server.port,
                            tls_context=ctx, require_starttls=True)
    controller.start()
    try:
        tls = make_settings(tmp_path / "home", KINKO_SMTP_URL=server.url)
        # The server offers STARTTLS with a certificate the system does not trust:
        # the notice is not sent at all (no plain-text fallback).
        with caplog.at_level(logging.ERROR, logger="portal.notify"):
            assert notify.send(tls, "a@example.jp", "subject", "body") is False
        assert received == []
        assert any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records)
        # Trusting that certificate, the same server gets the notice over TLS.
        monkeypatch.setenv("SSL_CERT_FILE", str(settings.tls_cert))
        assert notify.send(tls, "a@example.jp", "subject", "body") is True
        assert len(received) == 1
    finally:
        controller.stop()


def test_smtp_failure_is_logged_without_the_body(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path, KINKO_SMTP_URL="smtp://127.0.0.1:1")
    with caplog.at_level(logging.DEBUG):
        assert notify.send(settings, "a@example.jp", "subject", "SECRET-BODY") is False
    assert caplog.records and all("SECRET-BODY" not in r.getMessage() for r in caplog.records)
