"""The real browser of the dashboard tests: one headless Debian Chromium, driven by
Playwright, shared by every ``tests/test_browser_*.py`` test in a run, and the
helpers those tests share (the app served on a free port, a page opened in a fresh
context, screenshots under artifacts/screenshots/).

Why the browser is closed between runs of browser tests, not at the end of the
session: while Playwright's sync API is started, it marks its own asyncio event loop
as running in the main thread (between its calls too). A test that then runs asyncio
itself (``asyncio.run``), or starts another ``sync_playwright()``, fails. So Playwright
and Chromium are started at the first test that asks for ``browser`` and stopped after
the last test of that consecutive run (pytest orders the ``test_browser_*`` modules
together, so a whole-suite run starts them once); a non-browser test never runs beside
them. Each test still gets its own browser context (``open_page``): no cookies, storage
or cache pass from one test to the next.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright
from werkzeug.serving import make_server

from dashboard import create_app
from salespulse.settings import Settings
from tests.conftest import free_port

SHOTS = Path(__file__).resolve().parent.parent.parent / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
POLL_WAIT_MS = 15000  # one 5 s poll plus slack


class SharedBrowser:
    """Playwright and one Chromium, started on first use and stopped by ``stop``."""

    def __init__(self) -> None:
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self.launches = 0

    def get(self) -> Browser:
        if self._browser is None or not self._browser.is_connected():
            self.stop()
            self._playwright = sync_playwright().start()
            self._browser = self._playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                             headless=True)
            self.launches += 1
        return self._browser

    def stop(self) -> None:
        browser, playwright = self._browser, self._playwright
        self._browser = self._playwright = None
        try:
            if browser is not None and browser.is_connected():
                browser.close()
        finally:
            if playwright is not None:
                playwright.stop()


SHARED = SharedBrowser()


@pytest.fixture
def browser() -> Browser:
    """The run's Chromium (see the module's docstring); a test opens its own context."""
    return SHARED.get()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After a test's own fixtures are torn down: stop Playwright and Chromium if the
    next test does not use them (or there is none)."""
    yield
    if nextitem is None or "browser" not in getattr(nextitem, "fixturenames", ()):
        SHARED.stop()


def pytest_sessionfinish(session, exitstatus):
    SHARED.stop()


class Server:
    """The dashboard app served by werkzeug on a free port, in a thread."""

    def __init__(self, settings: Settings):
        self.app = create_app(settings)
        self.port = free_port()
        self.httpd = make_server("127.0.0.1", self.port, self.app, threaded=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.httpd.shutdown()
        self.thread.join(10)
        self.app.extensions["salespulse"]["db"].close()


def settings_for(url: str, **kw) -> Settings:
    base = {"database_url": url, "dashboard_cache_ttl": 0, "dashboard_rate_limit": "100000/minute",
            "dashboard_token": None, "cors_origins": "", "dagster_ui_url": "http://127.0.0.1:3999",
            # never the local stack of this machine (its processes would show on the pipeline page)
            "salespulse_state_dir": Path(tempfile.gettempdir()) / "salespulse-browser-no-stack"}
    base.update(kw)
    return Settings(**base)


def wait_js(page, expression: str, timeout_ms: int = POLL_WAIT_MS) -> None:
    """Poll a JS expression from Python (page.wait_for_function evaluates strings
    with eval(), which the dashboard's Content-Security-Policy rightly forbids)."""
    deadline = time.monotonic() + timeout_ms / 1000
    while not page.evaluate(f"() => Boolean({expression})"):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {expression}")
        page.wait_for_timeout(100)


def open_page(browser, url, width=1280, height=900):
    """A page in a new browser context (nothing shared with earlier tests), opened at
    ``url`` and waited for until the dashboard's first refresh; JS errors collected."""
    ctx = browser.new_context(viewport={"width": width, "height": height})
    page = ctx.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    wait_js(page, "Number(document.body.dataset.refreshes || 0) >= 1")
    return ctx, page, errors


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
