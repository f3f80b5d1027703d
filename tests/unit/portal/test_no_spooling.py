"""Werkzeug spools multipart files over 500 KiB to an unlinked temp file (which
no directory search can see).  Prove ours never does: any attempt to create a
temp file during an upload fails the test."""

from __future__ import annotations

import io
import re
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import select

from portal.auth.passwords import hash_password
from portal.instance import init_instance
from portal.models import ClientUser, Company, Upload
from portal.services import build_services
from portal.settings import Settings
from storage.envelope import open_envelope


@pytest.fixture
def client_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    settings = Settings.from_env({"KINKO_HOME": str(tmp_path / "home"),
                                  "KINKO_CLAMD": "unix:///nonexistent.sock"})
    init_instance(settings)
    svc = build_services(settings, "office")
    with svc.sessions() as db, db.begin():
        c = Company(code="acme", name="Acme")
        db.add(c)
        db.flush()
        db.add(ClientUser(company_id=c.id, login="hr", password_hash=hash_password("Passw0rd1"),
                          must_change_password=False))
    from portal.client import create_app
    app = create_app(settings)
    return app, svc


def test_multipart_upload_never_creates_a_temp_file(client_app, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    app, svc = client_app
    c = app.test_client()
    base = "https://localhost"
    page = c.get("/login", base_url=base)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = c.post("/login", base_url=base, headers={"Referer": base + "/"},
               data={"company": "acme", "login": "hr", "password": "Passw0rd1",
                     "csrf_token": token})
    assert r.status_code == 302
    token = re.search(r'name="csrf_token" value="([^"]+)"',
                      c.get("/", base_url=base).text).group(1)

    def forbidden(*_a, **_k):  # type: ignore[no-untyped-def]
        raise AssertionError("a temp file was created during the upload")

    for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, forbidden)
    data = b"a,b\n" + b"1,2\n" * (300 * 1024)  # 1.2 MiB: over Werkzeug's 500 KiB spool
    r = c.post("/uploads", base_url=base, headers={"Referer": base + "/"},
               data={"csrf_token": token, "purpose": "koyo",
                     "file": (io.BytesIO(data), "big.csv")},
               content_type="multipart/form-data")
    assert r.status_code == 303, r.text[:300]
    with svc.sessions() as db:
        up = db.execute(select(Upload)).scalar_one()
    assert up.size == len(data)
    raw = svc.dropzone.open(up.dropzone_key)
    assert b"1,2\n1,2" not in raw.read()  # ciphertext only
    raw = svc.dropzone.open(up.dropzone_key)
    plain = open_envelope(raw, up.dropzone_key, unwrapper=svc.dropzone_key).read()
    assert plain == data
