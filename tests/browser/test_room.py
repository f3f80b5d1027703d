"""The drag-and-drop upload room in a real browser (static/room.js): several
files dropped at once, each with its own progress and live status; an EICAR
file shows the virus label and the reason; the keyboard path (purpose select →
drop zone → Enter → file picker); no CSP complaints.  Screenshots go to
test-output/screenshots/room-*.png."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path
from typing import Any

import pytest
from functional.harness import Stack

from .conftest import STEP_MS, Tab

pytestmark = pytest.mark.clamd

# Built at run time so that no scanner ever quarantines this test file.
EICAR = (b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*")

SCAN_MS = 90_000  # clamd may be slow on a busy CI machine


def new_user(stack: Stack) -> tuple[str, str]:
    login = "room" + secrets.token_hex(3)
    password = "Pw" + secrets.token_hex(5) + "9"
    stack.kinko("user", "add", "acme", login, "--password", password)
    return login, password


def sign_in(tab: Tab, stack: Stack, login: str, password: str, *, company: str = "acme",
            base_url: str | None = None) -> None:
    """Sign in to the room (``base_url``: another way to the client app, e.g. a proxy)."""
    page = tab.page
    page.goto((base_url or stack.client_url) + "/login")
    page.fill("input[name=company]", company)
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", password)
    page.click("main form button[type=submit]")
    tab.wait_for_path("/")
    page.wait_for_selector("#room-drop:not([hidden])")


def labels(tab: Tab) -> dict[str, Any]:
    data: dict[str, Any] = tab.page.evaluate(
        "JSON.parse(document.getElementById('room-i18n').textContent)")
    return data


def drop(tab: Tab, files: list[tuple[str, bytes]]) -> None:
    """A real `drop` event with a DataTransfer holding the files."""
    payload = [{"name": n, "b64": base64.b64encode(b).decode()} for n, b in files]
    dt = tab.page.evaluate_handle(
        """(files) => {
             const dt = new DataTransfer();
             for (const f of files) {
               const bin = atob(f.b64);
               const bytes = new Uint8Array(bin.length);
               for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
               dt.items.add(new File([bytes], f.name, {type: "application/octet-stream"}));
             }
             return dt;
           }""", payload)
    zone = tab.page.locator("#room-drop")
    zone.dispatch_event("dragenter", {"dataTransfer": dt})
    zone.dispatch_event("dragover", {"dataTransfer": dt})
    zone.dispatch_event("drop", {"dataTransfer": dt})


def entry(tab: Tab, name: str) -> Any:
    return tab.page.locator("#room-list li.room-item", has=tab.page.locator(
        ".room-item-name", has_text=name))


def wait_badge(tab: Tab, name: str, text: str) -> None:
    badge = entry(tab, name).locator(".status")
    try:
        badge.filter(has_text=text).wait_for(timeout=SCAN_MS)
    except Exception as exc:  # noqa: BLE001 - reported with what the entry says
        raise AssertionError(f"{name}: wanted {text!r}, the entry says "
                             f"{entry(tab, name).inner_text()!r}") from exc


def test_room_drop_many_files_live_status(stack: Stack, tab: Tab) -> None:
    login, password = new_user(stack)
    page = tab.page
    sign_in(tab, stack, login, password)
    t = labels(tab)
    assert t["status"]["clean"] and t["status"]["infected"], t
    urls_before = page.url

    # Without a purpose, a drop is refused with a clear message.
    drop(tab, [("nopurpose.csv", b"a,b\n1,2\n")])
    msg = page.locator("#room-message")
    assert msg.is_visible() and msg.inner_text().strip() == t["need_purpose"]
    assert page.locator("#room-list li").count() == 0

    page.select_option("#purpose", "koyo")
    assert not msg.is_visible()
    files = [(f"社員{i}.csv", f"氏名,部署\n山田{i},総務\n".encode() * 2000) for i in range(3)]
    drop(tab, files)
    for name, _ in files:
        item = entry(tab, name)
        item.wait_for()
        assert item.locator("progress").count() == 1
    tab.shot("room-1-dropped")
    for name, _ in files:
        wait_badge(tab, name, t["status"]["clean"])
        item = entry(tab, name)
        assert item.locator("progress").evaluate("p => p.value === p.max")
        assert item.locator("a.room-item-link").get_attribute("href", timeout=STEP_MS) \
            .startswith("/uploads/")
        assert item.locator("button.room-cancel").count() == 0
    assert page.url == urls_before, "the page was reloaded"
    live = page.inner_text("#room-live")
    assert t["status"]["clean"] in live or t["status"]["received"] in live \
        or t["status"]["scanning"] in live, live
    tab.shot("room-2-clean")

    # An EICAR test file: "virus found" and the reason, live.
    drop(tab, [("eicar.csv", EICAR)])
    wait_badge(tab, "eicar.csv", t["status"]["infected"])
    reason = entry(tab, "eicar.csv").locator(".room-item-reason")
    reason.wait_for()
    assert "ウイルス" in reason.inner_text(), reason.inner_text()
    page.wait_for_function(
        "(want) => document.getElementById('room-live').textContent.includes(want)",
        arg=t["status"]["infected"], timeout=STEP_MS)
    tab.shot("room-3-eicar")
    assert page.url == urls_before

    # A file the intake refuses at once (type by content): the API's message.
    drop(tab, [("program.csv", b"MZ\x90\x00" + b"\x00" * 200)])
    refused = entry(tab, "program.csv")
    refused.locator(".room-item-reason").wait_for(timeout=SCAN_MS)
    assert refused.locator(".room-item-reason").inner_text().strip()

    # The room's table is the server's: after a reload, the uploads are there.
    page.reload()
    for name, _ in files:
        assert page.locator("table a", has_text=name).count() == 1, name

    assert not tab.csp_errors(), tab.csp_errors()
    assert not [m for m in tab.console_errors if "pageerror" in m], tab.console_errors


def test_room_cancel_one_upload(stack: Stack, tab: Tab) -> None:
    login, password = new_user(stack)
    page = tab.page
    sign_in(tab, stack, login, password)
    t = labels(tab)
    page.select_option("#purpose", "koyo")
    # Slow the network so that the upload is still running when cancelled.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 50, "downloadThroughput": 1_000_000,
        "uploadThroughput": 64 * 1024})
    big = b"a,b,c\n" + b"1,2,3\n" * 300_000  # ~1.8 MB: ~30 s at 64 KB/s
    drop(tab, [("big.csv", big)])
    item = entry(tab, "big.csv")
    page.wait_for_function(
        "() => { const p = document.querySelector('#room-list progress');"
        " return p && p.value > 0; }", timeout=STEP_MS)
    # Speed and time left, in the page's words ("{speed} per second", …).
    page.wait_for_timeout(1500)
    meta = item.locator(".room-item-meta").inner_text()
    for key, slot in (("speed", "{speed}"), ("left", "{time}")):
        words = [w for w in t[key].split(slot) if w.strip()]
        assert all(w.strip() in meta for w in words), (key, meta)
    tab.shot("room-4-progress")
    item.locator("button.room-cancel").focus()
    page.keyboard.press("Enter")
    wait_badge(tab, "big.csv", t["cancelled"])
    assert item.locator("button.room-cancel").count() == 0
    # Focus is not lost with the button: it is on the entry.
    assert page.evaluate("document.activeElement.classList.contains('room-item')")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    assert not tab.csp_errors(), tab.csp_errors()
    # The server must not keep the part that arrived before the abort.  Today
    # it does: under gunicorn (wsgi.input_terminated) a client disconnect ends
    # request.stream early and POST /api/v1/uploads registers the truncated
    # body, because nothing compares the bytes received with Content-Length.
    page.reload()
    rows = page.locator("tr", has=page.locator("a", has_text="big.csv"))
    if rows.count():
        pytest.xfail("server bug: a cancelled (truncated) API upload is registered: "
                     + " | ".join(rows.all_inner_texts()))


def test_room_keyboard_only(stack: Stack, tab: Tab, tmp_path: Path) -> None:
    login, password = new_user(stack)
    page = tab.page
    sign_in(tab, stack, login, password)
    t = labels(tab)

    # Playwright (Python) switches Chromium's file chooser interception on
    # asynchronously when the first listener is added, which races with a key
    # press right after expect_file_chooser(); a listener added now avoids it.
    page.on("filechooser", lambda chooser: None)
    # Tab from the top of the page until the purpose select has the focus.
    page.locator("body").focus()
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "purpose":
            break
    else:
        pytest.fail("the purpose select cannot be reached with Tab")
    # Choose the first purpose with the keyboard (a closed select takes arrows).
    page.keyboard.press("ArrowDown")
    assert page.eval_on_selector("#purpose", "s => s.value") != ""
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "room-drop"
    tab.shot("room-5-keyboard-focus")

    csv = tmp_path / "キーボード.csv"
    csv.write_bytes("氏名\n鈴木一郎\n".encode())
    with page.expect_file_chooser(timeout=STEP_MS) as chooser:
        page.keyboard.press("Enter")
    assert chooser.value.is_multiple()
    chooser.value.set_files(str(csv))
    wait_badge(tab, "キーボード.csv", t["status"]["clean"])
    tab.shot("room-6-keyboard-done")

    # Space opens the picker too.
    page.focus("#room-drop")
    with page.expect_file_chooser(timeout=STEP_MS):
        page.keyboard.press(" ")
    assert not tab.csp_errors(), tab.csp_errors()


def test_upload_page_updates_status_live(stack: Stack, tab: Tab) -> None:
    """The upload's page follows the status without a reload."""
    login, password = new_user(stack)
    page = tab.page
    sign_in(tab, stack, login, password)
    t = labels(tab)
    page.select_option("#purpose", "koyo")
    drop(tab, [("live.csv", b"a,b\n1,2\n")])
    link = entry(tab, "live.csv").locator("a.room-item-link")
    link.wait_for(timeout=SCAN_MS)
    link.click()
    tab.wait_for_path("/uploads/[^/]+")
    status = page.locator("#upload-status")
    status.filter(has_text=t["status"]["clean"]).wait_for(timeout=SCAN_MS)
    assert not tab.csp_errors(), tab.csp_errors()


def test_room_files_reach_the_vault_live(stack: Stack, tab: Tab) -> None:
    """A company whose files the office pulls automatically: three dropped
    files go received → scanning → in the vault on the page, no reload."""
    code = "vault" + secrets.token_hex(2)
    stack.kinko("company", "add", code, "--name", "自動取込株式会社", "--auto-pull")
    login, password = "hr", "Pw" + secrets.token_hex(5) + "9"
    stack.kinko("user", "add", code, login, "--password", password)
    page = tab.page
    sign_in(tab, stack, login, password, company=code)
    t = labels(tab)
    page.select_option("#purpose", "koyo")
    files = [(f"給与{i}.csv", f"氏名,金額\n佐藤{i},1000\n".encode() * 500) for i in range(3)]
    before = page.url
    drop(tab, files)
    for name, _ in files:
        wait_badge(tab, name, t["status"]["vaulted"])
    assert page.url == before, "the page was reloaded"
    tab.shot("room-7-in-the-vault")
