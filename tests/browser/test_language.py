"""Japanese first, English as a switch, in a real browser: the room starts in
Japanese, the header's button turns it (and the live status labels of
static/room.js) into English, the choice is kept on the account across a new
sign-in, and the button turns it back.  Screenshots: lang-*.png."""

from __future__ import annotations

import pytest
from functional.harness import Stack

from .conftest import JAPANESE, Tab
from .test_room import drop, labels, new_user, sign_in, wait_badge

pytestmark = pytest.mark.clamd


def switch(tab: Tab, to: str) -> None:
    button = tab.page.locator("header form button[lang]")
    assert button.get_attribute("lang") == to
    button.click()
    tab.page.wait_for_function("(want) => document.documentElement.lang === want", arg=to)
    tab.page.wait_for_selector("#room-drop:not([hidden])")


def test_switch_language_in_the_room(stack: Stack, tab: Tab) -> None:
    login, password = new_user(stack)
    page = tab.page
    sign_in(tab, stack, login, password)
    assert page.get_attribute("html", "lang") == "ja"
    ja = labels(tab)
    assert JAPANESE.search(ja["status"]["clean"]), ja["status"]
    assert page.locator("header form button[lang]").inner_text().strip() == "English"

    switch(tab, "en")
    en = labels(tab)
    assert en["status"]["clean"] != ja["status"]["clean"]
    assert not JAPANESE.search(en["status"]["clean"] + page.inner_text("h1")), en["status"]
    # The live status of a dropped file speaks English too.
    page.select_option("#purpose", "koyo")
    drop(tab, [("english.csv", b"name,dept\nYamada,HR\n" * 100)])
    wait_badge(tab, "english.csv", en["status"]["clean"])
    tab.shot("lang-1-english-room")

    # The choice is the account's: a new browser session signs in in English.
    page.context.clear_cookies()
    sign_in(tab, stack, login, password)
    assert page.get_attribute("html", "lang") == "en"
    assert labels(tab)["status"]["clean"] == en["status"]["clean"]

    switch(tab, "ja")
    assert labels(tab)["status"]["clean"] == ja["status"]["clean"]
    tab.shot("lang-2-back-to-japanese")
    assert not tab.csp_errors(), tab.csp_errors()
