"""The demo accounts `make run` creates on first start, and how to log in.

Their credentials are kept in ``KINKO_HOME/demo-credentials.txt`` (mode 600)
so that every start can print them.  A demo instance only: real accounts
are created with `kinko company add`, `kinko user add`, `kinko staff add`.
"""

from __future__ import annotations

import os

import pyotp
from sqlalchemy import select

from .audit import Actor, Tag, record
from .auth.passwords import hash_password, initial_password
from .models import ClientUser, Company, Staff
from .services import Services

CODE = "demo"


def ensure_demo(svc: Services) -> str:
    path = svc.settings.home / "demo-credentials.txt"
    client_pw, staff_pw = initial_password(), initial_password()
    secret = pyotp.random_base32()
    text = (
        "Demo accounts (demo instance only):\n"
        f"  client app  company code: {CODE}  login: hr  password: {client_pw}\n"
        f"  office app  login: manager  password: {staff_pw}\n"
        f"              TOTP secret (add to an authenticator app): {secret}\n"
        f"              otpauth URI: "
        f"{pyotp.TOTP(secret).provisioning_uri(name='manager', issuer_name='kinko')}\n"
    )
    with svc.sessions() as db, db.begin():
        if db.execute(select(Company).where(Company.code == CODE)).scalar_one_or_none():
            return path.read_text() if path.exists() else "demo accounts exist"
        company = Company(code=CODE, name="デモ株式会社")
        db.add(company)
        db.flush()
        db.add(ClientUser(company_id=company.id, login="hr", display_name="人事 花子",
                          password_hash=hash_password(client_pw), must_change_password=False))
        db.add(Staff(login="manager", display_name="事務取扱責任者", role="manager",
                     password_hash=hash_password(staff_pw), totp_secret=secret))
        record(db, svc.audit_key, Tag.COMPANY_CREATED, Actor("cli", None, "demo"),
               company_id=company.id, details={"code": CODE})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return text
