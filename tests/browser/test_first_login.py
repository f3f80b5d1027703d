"""First sign-in in a real browser: client (initial password → TOTP enrolment →
recovery codes → forced password change → room → upload) and office (TOTP
enrolment → inbox).  Screenshots go to test-output/screenshots/."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pyotp
import pytest
from functional.harness import Stack

from .conftest import Tab

pytestmark = pytest.mark.clamd

NEW_PASSWORD = "Hinode-4821-Kawa"  # 8+ chars, letters and digits, not common


def require_2fa(stack: Stack, code: str) -> None:
    """`kinko company set CODE --require-2fa` where the CLI has it, else the
    column directly (the CLI command is being added in parallel)."""
    probe = stack.kinko("company", "set", "--help", check=False)
    if probe.returncode == 0 and "--require-2fa" in probe.stdout:
        stack.kinko("company", "set", code, "--require-2fa")
    else:
        with sqlite3.connect(stack.home / "kinko.db") as db:
            n = db.execute("UPDATE companies SET require_2fa = 1 WHERE code = ?",
                           (code,)).rowcount
        assert n == 1, f"no company {code} in kinko.db"


def initial_password(out: str) -> str:
    m = re.search(r"^initial password: (\S+)$", out, re.M)
    assert m, f"no initial password in: {out!r}"
    return m.group(1)


def enrol(tab: Tab, shot: str) -> list[str]:
    """On the enrolment page: read the key, type the current code, return the
    recovery codes shown afterwards."""
    page = tab.page
    tab.wait_for_path("/totp/enrol")
    tab.check_japanese()
    assert page.locator("img[src^='data:image/svg+xml']").count() == 1, "no QR code"
    shown = page.inner_text("code.secret")
    assert re.fullmatch(r"[A-Z2-7]{4}( [A-Z2-7]{1,4})+", shown.strip()), shown
    tab.shot(shot)
    secret = shown.replace(" ", "")
    page.fill("input[name=code]", pyotp.TOTP(secret).now())
    page.click("main form button[type=submit]")
    page.wait_for_load_state()
    page.wait_for_selector("ul.codes")
    tab.check_japanese()
    return [c.strip() for c in page.locator("ul.codes li code").all_inner_texts()]


def test_client_first_login(stack: Stack, tab: Tab, tmp_path: Path) -> None:
    stack.kinko("company", "add", "gamma", "--name", "ガンマ工業株式会社")
    require_2fa(stack, "gamma")
    out = stack.kinko("user", "add", "gamma", "sato", "--name", "佐藤 花子").stdout
    first = initial_password(out)
    page = tab.page

    # 1. Password step.
    page.goto(stack.client_url + "/login")
    tab.check_japanese("ログイン")
    tab.shot("client-1-login")
    page.fill("input[name=company]", "gamma")
    page.fill("input[name=login]", "sato")
    page.fill("input[name=password]", first)
    page.click("main form button[type=submit]")

    # 2. The company requires 2FA and there is none yet: enrolment.
    codes = enrol(tab, "client-2-totp-enrol")
    assert len(codes) == 10, codes
    assert len(set(codes)) == 10, codes
    tab.shot("client-3-recovery-codes")

    # 3. Continue → the initial password must be changed first.
    page.click("main a.button")
    tab.wait_for_path("/password")
    tab.check_japanese()
    assert page.locator("p.flash.info").count() == 1, "no notice that the change is forced"
    tab.shot("client-4-password")
    page.fill("input[name=current_password]", first)
    page.fill("input[name=new_password]", NEW_PASSWORD)
    page.fill("input[name=new_password_confirm]", NEW_PASSWORD)
    page.click("main form button[type=submit]")

    # 4. The room, with the upload form.
    tab.wait_for_path("/")
    tab.check_japanese("事務所へファイルを送る")
    assert page.locator("form.upload input[type=file][name=file]").count() == 1
    tab.shot("client-5-room")

    # 5. Upload a small CSV through the form.
    csv = tmp_path / "社員一覧.csv"
    csv.write_bytes("氏名,生年月日\n山田太郎,1980-04-01\n".encode())
    page.select_option("select[name=purpose]", "koyo")
    page.set_input_files("input[name=file]", str(csv))
    page.click("main form.upload button[type=submit]")
    tab.wait_for_path("/uploads/[^/]+")
    assert page.inner_text("h1").strip() == "社員一覧.csv"
    tab.check_japanese("受け付けました")
    assert "雇用保険" in page.inner_text("dl")
    tab.shot("client-6-upload")

    # 6. The new password works, the initial one no longer does.
    stack.client("gamma", "sato", NEW_PASSWORD)
    with pytest.raises(AssertionError):
        stack.client("gamma", "sato", first)

    assert_clean_console(tab)
    assert not tab.not_japanese, "pages not in Japanese:\n" + "\n".join(tab.not_japanese)


def test_office_first_login_enrols_totp(stack: Stack, tab: Tab) -> None:
    password = "Kagami-7305-Mado"
    out = stack.kinko("staff", "add", "kimura", "--role", "manager",
                      "--password", password).stdout
    assert "set up at the first sign-in" in out
    page = tab.page

    page.goto(stack.office_url + "/login")
    tab.check_japanese("事務所ログイン")
    tab.shot("office-1-login")
    page.fill("input[name=login]", "kimura")
    page.fill("input[name=password]", password)
    page.click("main form button[type=submit]")

    codes = enrol(tab, "office-2-totp-enrol")
    assert len(codes) == 10, codes
    page.click("main a.button")
    tab.wait_for_path("/")
    tab.check_japanese("受信一覧")
    assert page.locator("select[name=status]").count() == 1, "not the inbox"
    tab.shot("office-3-inbox")

    assert_clean_console(tab)
    assert not tab.not_japanese, "pages not in Japanese:\n" + "\n".join(tab.not_japanese)


def assert_clean_console(tab: Tab) -> None:
    tab.page.wait_for_timeout(200)  # let the last page's console events arrive
    assert not tab.csp_errors(), tab.csp_errors()
    assert not tab.failed_requests, tab.failed_requests  # stylesheet, QR image, pages
