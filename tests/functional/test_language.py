"""Per-user language over the real stack: the switch saves it to the account,
sign-in restores it, the receipt PDF follows the downloading user's language,
and notices reach each staff member (aiosmtpd) in their own language."""

from __future__ import annotations

import re
import uuid

import pyotp
import requests
from smtpserver import SmtpServer, text_of

from .harness import Stack, Totp, csrf_from
from .test_receipt import pdf_text


def switch_language(stack: Stack, session: requests.Session, base: str, code: str) -> None:
    page = session.get(base + "/")
    assert page.status_code == 200
    r = session.post(f"{base}/lang/{code}", data={"csrf_token": csrf_from(page.text),
                                                  "next": "/"}, allow_redirects=False)
    assert r.status_code == 302


def logout(session: requests.Session, base: str) -> None:
    page = session.get(base + "/")
    r = session.post(base + "/logout", data={"csrf_token": csrf_from(page.text)},
                     allow_redirects=False)
    assert r.status_code in (302, 303)


def new_company(stack: Stack) -> tuple[str, str]:
    code = "lng" + uuid.uuid4().hex[:6]
    name = f"言語テスト株式会社{code[-3:]}"
    stack.kinko("company", "add", code, "--name", name)
    for login in ("en-user", "ja-user"):
        stack.kinko("user", "add", code, login, "--password", "Lang-Passw0rd1",
                    "--email", f"{login}-{code}@example.jp")
    return code, name


def language_of(stack: Stack, table: str, login: str) -> str:
    with stack.db() as db:
        row = db.execute(f"SELECT language FROM {table} WHERE login = ?", (login,)).fetchone()  # noqa: S608 - fixed table names
    return str(row[0])


def test_client_language_persists_and_picks_the_receipt_language(stack: Stack) -> None:
    code, _name = new_company(stack)
    en = stack.client(code, "en-user", "Lang-Passw0rd1")
    switch_language(stack, en, stack.client_url, "en")
    assert language_of(stack, "client_users", "en-user") == "en"
    with stack.db() as db:
        actions = [r[0] for r in db.execute(
            "SELECT action FROM audit_events WHERE actor_label = 'en-user'").fetchall()]
    assert "account:language:changed" in actions

    # A fresh browser (no language cookie): the saved preference comes back at sign-in.
    logout(en, stack.client_url)
    en = stack.client(code, "en-user", "Lang-Passw0rd1")
    assert en.cookies.get("kinko_lang") == "en"
    room = en.get(stack.client_url + "/")
    assert "Your uploads" in room.text

    # The receipt follows the downloading user's language, page or API.
    r = stack.form_upload(en, f"a,b\n{uuid.uuid4()},1\n".encode(), "list.csv")
    assert r.status_code == 303, r.text[:300]
    upload_id = r.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
    en_token = stack.token(code, "en-user")
    stack.wait_for(en_token, upload_id, {"clean"})
    text = pdf_text(en.get(f"{stack.client_url}/uploads/{upload_id}/receipt.pdf").content)
    assert "Receipt" in text and "受領書" not in text
    assert re.search(r"\d{4}-\d{2}-\d{2}\d{2}:\d{2}JST", text)  # ISO-like (spaces removed)
    api = requests.get(f"{stack.client_url}/api/v1/uploads/{upload_id}/receipt",
                       headers={"Authorization": f"Bearer {en_token}"}, verify=stack.cert,
                       timeout=30)
    assert "Receipt" in pdf_text(api.content)

    # A Japanese-preferring user of the same company gets the same file in Japanese.
    ja = stack.client(code, "ja-user", "Lang-Passw0rd1")
    assert language_of(stack, "client_users", "ja-user") == "ja"
    text = pdf_text(ja.get(f"{stack.client_url}/uploads/{upload_id}/receipt.pdf").content)
    assert "受領書" in text
    assert re.search(r"\d{4}年\d{1,2}月\d{1,2}日\d{2}:\d{2}", text)  # the Japanese way

    # Switching back is saved too, and survives another sign-in.
    switch_language(stack, en, stack.client_url, "ja")
    logout(en, stack.client_url)
    again = stack.client(code, "en-user", "Lang-Passw0rd1")
    assert again.cookies.get("kinko_lang") == "ja"
    assert language_of(stack, "client_users", "en-user") == "ja"


def add_staff_with_mail(stack: Stack, login: str, code: str) -> str:
    secret = pyotp.random_base32()
    mail = f"{login}@office.example.jp"
    stack.kinko("staff", "add", login, "--role", "handler", "--password", "Passw0rd-" + login,
                "--totp-secret", secret, "--companies", code, "--email", mail)
    stack.totps[login] = Totp(secret)
    return mail


def test_staff_notices_arrive_in_each_recipients_language(stack: Stack) -> None:
    code, name = new_company(stack)
    suffix = code[-6:]
    en_mail = add_staff_with_mail(stack, f"en-{suffix}", code)
    ja_mail = add_staff_with_mail(stack, f"ja-{suffix}", code)
    office = stack.office(f"en-{suffix}")
    switch_language(stack, office, stack.office_url, "en")
    assert language_of(stack, "staff", f"en-{suffix}") == "en"

    token = stack.token(code, "ja-user")
    r = stack.api_upload(token, f"x,y\n{uuid.uuid4()},2\n".encode(), "names.csv")
    assert r.status_code == 201, r.text
    with SmtpServer() as smtp:
        env = {**stack.env, "KINKO_SMTP_URL": smtp.url, "KINKO_NOTICE_BATCH_MINUTES": "0",
               "KINKO_MAIL_FROM": "kinko@office.example.jp"}
        out = stack.kinko("notices", "run", env=env)
        sent = int(out.stdout.split(":")[1])
        msgs = smtp.wait_for(sent) if sent else []
    mine = {str(m["To"]): m for m in msgs if str(m["To"]) in (en_mail, ja_mail)}
    assert sorted(mine) == sorted([en_mail, ja_mail])
    en_subject, en_body = str(mine[en_mail]["Subject"]), text_of(mine[en_mail])
    ja_subject, ja_body = str(mine[ja_mail]["Subject"]), text_of(mine[ja_mail])
    assert en_subject.startswith("[kinko] New files from") and name in en_subject
    assert "New files have arrived" in en_body and "届きました" not in en_body
    assert "届きました" in ja_subject and "New files" not in ja_subject
    assert "New files have arrived" not in ja_body
