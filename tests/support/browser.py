"""A real browser for tests: Debian's headless Chromium, driven by Playwright.

Playwright's own browser download is never used (``scripts/ci/chromium.sh`` installs the
system Chromium); ``JETTY_PROXY_TEST_CHROMIUM`` names its binary. Outside CI a missing browser
skips the tests that need it; in CI (``CI=true``) it fails them.

Every page a test opens is watched: console errors, uncaught exceptions and dialogs
(``alert`` and friends) are collected in :attr:`WatchedPage.problems`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from playwright.sync_api import Browser, BrowserContext, Dialog, Page, sync_playwright

from tests.support.ci import unavailable

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    path = os.environ.get("JETTY_PROXY_TEST_CHROMIUM") or shutil.which("chromium")
    if path and os.access(path, os.X_OK):
        return path
    unavailable(
        "Chromium is missing (set JETTY_PROXY_TEST_CHROMIUM)", "scripts/ci/chromium.sh installs it"
    )


# Per test, not per session: while Playwright's sync API is open it holds an event loop in
# this thread, and every later test that starts one of its own would fail.
@pytest.fixture
def chromium() -> Iterator[Browser]:
    path = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class WatchedPage:
    page: Page
    context: BrowserContext
    problems: list[str] = field(default_factory=list)

    def probe_for_script(self) -> dict[str, object]:
        """What script injected into the page could have left behind."""
        result: dict[str, object] = self.page.evaluate(
            """() => ({
                pwned: window.__pwned === undefined ? null : String(window.__pwned),
                scripts: [...document.scripts].map(s => s.getAttribute("src")),
                handlers: [...document.querySelectorAll("*")].flatMap(
                    e => [...e.attributes].filter(a => a.name.startsWith("on")).map(
                        a => e.tagName + "[" + a.name + "]")),
                active: document.querySelectorAll("iframe, object, embed, base, form[action^=java]")
                    .length,
                javascriptLinks: [...document.querySelectorAll("a[href]")].filter(
                    a => a.href.toLowerCase().startsWith("javascript:")).length,
            })"""
        )
        return result


@pytest.fixture
def watched(chromium: Browser) -> Iterator[WatchedPage]:
    context = chromium.new_context(accept_downloads=True)
    page = context.new_page()
    watched = WatchedPage(page, context)

    def on_dialog(dialog: Dialog) -> None:
        watched.problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    page.on(
        "console",
        lambda message: (
            watched.problems.append(f"console: {message.text}") if message.type == "error" else None
        ),
    )
    page.on("pageerror", lambda error: watched.problems.append(f"page error: {error}"))
    page.on("dialog", on_dialog)
    try:
        yield watched
    finally:
        context.close()
