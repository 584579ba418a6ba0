"""A real Chromium (Debian's package) driven by Playwright, for the portal and admin browser tests.

No browser is ever downloaded: Playwright launches /usr/bin/chromium. Every request outside the
live server is recorded and must not happen, so the pages work offline (no CDN).
"""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.db import connections

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason="Debian's chromium is not installed at /usr/bin/chromium (`make browser` installs it)",
)


@pytest.fixture(scope="module")
def chromium():
    """One Chromium for a module's tests; each test opens a context of its own (own cookies,
    storage and cache), which is all the isolation a page needs, without a browser start a test.

    Playwright's sync API keeps an event loop running in this thread while it is started, so ORM
    work in the thread (the tests' fixtures, the flush after each) is allowed for the module; the
    browser modules hold browser tests only, and the loop is gone before the next module."""
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            yield browser
            browser.close()


@pytest.fixture
def page(live_server, chromium):
    allowed = urlparse(live_server.url).netloc
    foreign: list[str] = []
    context = chromium.new_context(locale="en-US", viewport={"width": 1280, "height": 900})

    def guard(route):
        if urlparse(route.request.url).netloc == allowed or route.request.url.startswith("data:"):
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.base_url = live_server.url
    yield page
    context.close()
    assert foreign == [], f"pages fetched outside the server: {foreign}"


def screenshot(page, name: str) -> None:
    """Keeps a full-page screenshot when PORTAL_SCREENSHOTS_DIR names a folder."""
    target = os.environ.get("PORTAL_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / name), full_page=True)


def orm(read):
    """Runs `read()` (ORM work in a test body) in a thread of its own, then closes its connection.

    Playwright's sync API keeps an event loop running in the test's thread, so Django would give
    ORM calls made there a connection of their own that nothing closes (and that then blocks the
    test database from being dropped)."""

    def run():
        try:
            return read()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()
