"""Notices end to end: uploads through the real HTTPS API with a planted file
name; the notice job (`kinko notices run`, what the worker runs every minute)
against a real SMTP server (aiosmtpd) and in outbox mode; the office
console's outbox page."""

from __future__ import annotations

import re
import uuid

from smtpserver import SmtpServer, text_of

from .harness import Stack

PLANTED = "山田太郎_123456789018.xlsx"
TWELVE = re.compile(r"(?<!\d)\d{12}(?!\d)")


def csv_bytes() -> bytes:
    return f"氏名,メモ\n社員,{uuid.uuid4()}\n".encode()


def new_company(stack: Stack) -> tuple[str, str, str, str, str]:
    """A company of its own (so no other test's uploads are counted), a client
    user and a handler with addresses.  Returns code, name, token, client and
    handler addresses."""
    code = "ntc" + uuid.uuid4().hex[:6]
    name = f"通知テスト株式会社{code[-3:]}"
    stack.kinko("company", "add", code, "--name", name)
    client_mail, staff_mail = f"hr-{code}@example.jp", f"h-{code}@office.example.jp"
    stack.kinko("user", "add", code, "hr", "--password", "Ntc-Passw0rd1",
                "--email", client_mail)
    stack.kinko("staff", "add", f"h-{code}", "--role", "handler", "--password",
                "Ntc-Passw0rd1", "--companies", code, "--email", staff_mail)
    return code, name, stack.token(code, "hr"), client_mail, staff_mail


def upload_planted(stack: Stack, token: str) -> str:
    r = stack.api_upload(token, csv_bytes(), PLANTED.replace(".xlsx", ".csv"))
    assert r.status_code == 201, r.text
    body = r.json()
    assert "山田太郎" in body["filename"]  # the name really was planted
    return str(body["id"])


def assert_no_personal_data(text: str) -> None:
    assert "山田太郎" not in text
    assert "123456789018" not in text
    assert not TWELVE.search(text)


def test_notices_by_smtp_carry_the_company_and_count_but_no_file_name(stack: Stack) -> None:
    code, name, token, client_mail, staff_mail = new_company(stack)
    upload_id = upload_planted(stack, token)
    assert stack.wait_for(token, upload_id, {"clean", "infected", "refused"})["status"] \
        == "clean"
    stack.kinko("vault", "pull", upload_id, "--staff", "boss")
    assert stack.status(token, upload_id)["status"] == "vaulted"

    with SmtpServer() as smtp:
        env = {**stack.env, "KINKO_SMTP_URL": smtp.url, "KINKO_NOTICE_BATCH_MINUTES": "0",
               "KINKO_MAIL_FROM": "kinko@office.example.jp"}
        out = stack.kinko("notices", "run", env=env)
        assert out.stdout.startswith("notices sent:"), out.stdout
        sent = int(out.stdout.split(":")[1])
        msgs = smtp.wait_for(sent) if sent else []
        # Only this test's company matters; other companies may be due as well.
        mine = {str(m["To"]): m for m in msgs if str(m["To"]) in (client_mail, staff_mail)}
        assert sorted(mine) == sorted([client_mail, staff_mail])
        for m in msgs:
            assert_no_personal_data(m.as_string())
            assert_no_personal_data(text_of(m))
        staff_text = text_of(mine[staff_mail])
        assert name in str(mine[staff_mail]["Subject"])
        assert re.search(r"(?<!\d)1(?!\d)", str(mine[staff_mail]["Subject"]))
        assert stack.office_url.split("://")[1] in staff_text  # where to look
        client_text = text_of(mine[client_mail])
        assert name in client_text and re.search(r"(?<!\d)1(?!\d)", client_text)
        assert str(mine[client_mail]["From"]) == "kinko@office.example.jp"

        # Nothing new: the next run sends nothing for this company.
        smtp.clear()
        stack.kinko("notices", "run", env=env)
        assert not [m for m in smtp.messages if str(m["To"]) in (client_mail, staff_mail)]


def test_the_outbox_page_lists_notices_written_without_smtp(stack: Stack) -> None:
    code, name, token, _client_mail, staff_mail = new_company(stack)
    upload_id = upload_planted(stack, token)
    stack.wait_for(token, upload_id, {"clean", "infected", "refused"})
    # The stack runs without KINKO_SMTP_URL: notices go to KINKO_HOME/outbox.
    env = {**stack.env, "KINKO_NOTICE_BATCH_MINUTES": "0"}
    env.pop("KINKO_SMTP_URL", None)
    stack.kinko("notices", "run", env=env)
    for path in (stack.home / "outbox").glob("*.eml"):
        assert path.stat().st_mode & 0o777 == 0o600
        assert_no_personal_data(path.read_bytes().decode("utf-8", "replace"))

    boss = stack.office("boss")
    page = boss.get(stack.office_url + "/outbox")
    assert page.status_code == 200
    assert staff_mail in page.text and name in page.text
    assert_no_personal_data(page.text)
    links = re.findall(r'href="(/outbox/[^"]+\.eml)"', page.text)
    assert links
    found = False
    for link in links:
        detail = boss.get(stack.office_url + link)
        assert detail.status_code == 200
        assert_no_personal_data(detail.text)
        if staff_mail in detail.text:
            found = True
            assert name in detail.text
    assert found
    assert boss.get(stack.office_url + "/outbox/..%2Fkinko.db").status_code == 404

    # Handlers do not read the outbox (it names other companies' people).
    hana = stack.office("hana")
    assert hana.get(stack.office_url + "/outbox").status_code == 403
