"""Real-browser tests: Debian's Chromium driven by Playwright against the real
stack of the functional tests (`kinko serve` over HTTPS with a real clamd).

Playwright's own browser download is not used (no internet on CI): the
`playwright` wheel brings the driver, `scripts/install-system-deps.sh`
installs `chromium` and `fonts-noto-cjk` from Debian.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

# The stack of the functional tests.  tests/ is on sys.path (it holds a
# conftest.py and no __init__.py), so this is the very module pytest loaded
# for tests/functional.  The browser's stack takes larger uploads: the
# resumable-upload test sends 300 MiB (test_resume.py).
from functional.harness import Stack, build_stack, require_clamd, teardown_stack

BROWSER_MAX_UPLOAD = 320 << 20

CHROMIUM = os.environ.get("KINKO_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-output" / "screenshots"
STEP_MS = 30_000  # every navigation, wait and action is bounded by this
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
JAPANESE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_clamd()
    s = build_stack(tmp_path_factory.mktemp,
                    extra_env={"KINKO_MAX_UPLOAD_BYTES": str(BROWSER_MAX_UPLOAD)})
    try:
        yield s
    finally:
        teardown_stack(s)


@pytest.fixture(scope="session", autouse=True)
def chromium_path() -> str:
    """Checked first (autouse), before the stack is started for nothing."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (run scripts/install-system-deps.sh)")
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(chromium_path: str) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("the playwright package is missing: pip install -e '.[test]'")
        pytest.skip("the playwright package is missing (pip install -e '.[test]')")
    with sync_playwright() as pw:
        # Playwright gives every launch a fresh, throw-away --user-data-dir
        # (and refuses one in args), so no ~/.config/chromium is ever used.
        b = pw.chromium.launch(executable_path=chromium_path, headless=True,
                               args=CHROMIUM_ARGS, timeout=STEP_MS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@dataclass
class Tab:
    """A page in a fresh browser context, with what the console said."""

    page: Any
    shots: Path
    console_errors: list[str] = field(default_factory=list)
    not_japanese: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True, timeout=STEP_MS)
        return path

    def check_japanese(self, expected: str | None = None) -> None:
        """html[lang=ja] and a Japanese heading; failures are collected so that
        one untranslated page does not hide problems further along the flow."""
        lang = self.page.get_attribute("html", "lang")
        h1 = self.page.inner_text("h1").strip()
        where = self.page.url.split("?")[0]
        if lang != "ja":
            self.not_japanese.append(f"{where}: html lang={lang!r}")
        if expected is not None and expected not in self.page.content():
            self.not_japanese.append(f"{where}: {expected!r} not on the page")
        if not JAPANESE.search(h1):
            self.not_japanese.append(f"{where}: heading {h1!r} is not Japanese")
        # The header's links (the language switch is a button, not a link).
        for link in self.page.locator("header nav a").all_inner_texts():
            if not JAPANESE.search(link):
                self.not_japanese.append(f"{where}: menu link {link.strip()!r} is not Japanese")

    def wait_for_path(self, pattern: str) -> None:
        """Wait until the URL's path matches ``pattern`` (a full match); on a
        timeout, say where the browser is and what the page says."""
        rx = re.compile(pattern)
        try:
            self.page.wait_for_url(lambda url: bool(rx.fullmatch(urlsplit(url).path)),
                                   timeout=STEP_MS)
        except Exception as exc:  # noqa: BLE001 - reported with the page's state
            flashes = self.page.locator(".flash").all_inner_texts()
            raise AssertionError(
                f"wanted a path like {pattern!r}, the browser is at {self.page.url}; "
                f"title {self.page.title()!r}, messages {flashes}") from exc

    def csp_errors(self) -> list[str]:
        return [m for m in self.console_errors if "Content Security Policy" in m]


@pytest.fixture
def tab(browser: Any, screenshots: Path) -> Iterator[Tab]:
    # A Japanese browser; the app is Japanese by default anyway (no cookie).
    context = browser.new_context(ignore_https_errors=True, locale="ja-JP",
                                  timezone_id="Asia/Tokyo",
                                  viewport={"width": 1024, "height": 768})
    context.set_default_timeout(STEP_MS)
    context.set_default_navigation_timeout(STEP_MS)
    page = context.new_page()
    t = Tab(page, screenshots)
    page.on("console", lambda m: t.console_errors.append(m.text) if m.type == "error"
            else None)
    page.on("pageerror", lambda e: t.console_errors.append(f"pageerror: {e}"))
    page.on("response", lambda r: t.failed_requests.append(f"{r.status} {r.url}")
            if r.status >= 400 else None)
    try:
        yield t
    finally:
        context.close()
