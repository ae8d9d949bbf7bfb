"""Browser tests of the supervisor console (issue 14): the real API (uvicorn on a free port, against a fresh
migrated database) driven by Playwright through Debian's Chromium (``/usr/bin/chromium``, installed by
``scripts/install.sh``; Playwright's own browser downloads are never used).

Without that Chromium the module is skipped with the reason — except in CI (``CI`` set), where a missing browser
fails the run: the console must be tested there. Every page a test opens collects console errors and uncaught
exceptions; a test fails if any appeared that it did not expect (``ConsolePage.allow``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from sanitel.api.app import create_app
from tests.integration import conftest as integration
from tests.support.api_helpers import api_settings, mint_key, seed, serve

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Error, Page, ViewportSize

# the integration fixtures (private PostgreSQL and Mosquitto on free ports, collectors), shared by name
scratch_dir = integration.scratch_dir
make_postgres = integration.make_postgres
make_mosquitto = integration.make_mosquitto
pg_server = integration.pg_server
mqtt_server = integration.mqtt_server
_database_dropper = integration._database_dropper
fresh_db = integration.fresh_db
make_collector = integration.make_collector

CHROMIUM = Path(os.environ.get("SANITEL_CHROMIUM", "/usr/bin/chromium"))
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
WAIT_MS = 10_000  # the longest any test waits for the page (also the bound for a live alert)


@dataclass
class Console:
    """A running API with the console, its database and keys of each role."""

    url: str
    db: str
    supervisor: str
    viewer: str


@dataclass
class ConsolePage:
    """A browser page that records console errors and uncaught exceptions."""

    page: Page
    console: Console
    errors: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        """An error this test provokes on purpose (a refused request logs one in Chromium's console)."""
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]

    def sign_in(self, token: str, hash_: str = "#/alerts") -> None:
        self.page.goto(f"{self.console.url}/{hash_}")
        self.page.fill("#apikey", token)
        self.page.click("#signin button[type=submit]")
        self.page.wait_for_selector("nav.pages a[aria-current=page]", timeout=WAIT_MS)


def _chromium_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401 - only whether it is installed
    except ImportError:
        return "the Python package playwright is not installed (scripts/install.sh installs it)"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (scripts/install.sh installs Debian's chromium)"
    return None


@pytest.fixture(scope="package")  # not session: its event loop must be gone before other tests call asyncio.run
def browser() -> Iterator[Browser]:
    missing = _chromium_missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests must run in CI: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # headless; no sandbox: CI runs as root, where Chromium's sandbox refuses to start
        launched = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


def start_console(db: str, data_dir: Path, **settings: Any) -> Iterator[Console]:
    app = create_app(api_settings(db, data_dir, **settings))
    with serve(app) as url:
        yield Console(url, db, mint_key(db, "supervisor", "sup-wang"), mint_key(db, "viewer", "viewer-li"))


@pytest.fixture
def console(fresh_db: str, tmp_path: Path) -> Iterator[Console]:
    """The API with the console on the seeded registry (tests/support/api_helpers.py) of a fresh database."""
    seed(fresh_db)
    yield from start_console(fresh_db, tmp_path)


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., ConsolePage]]:
    """Factory: a fresh browser context (its own sessionStorage) and page on a console; checked for errors."""
    opened: list[tuple[ConsolePage, Any]] = []

    def make(console: Console, viewport: ViewportSize | None = None, locale: str = "en-US") -> ConsolePage:
        context = browser.new_context(viewport=viewport or DESKTOP, locale=locale, accept_downloads=True)
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        wrapped = ConsolePage(page, console)

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                wrapped.errors.append(f"{message.text} ({message.location.get('url', '')})")

        def on_error(error: Error) -> None:
            wrapped.errors.append(f"uncaught: {error}")

        page.on("console", on_console)
        page.on("pageerror", on_error)
        opened.append((wrapped, context))
        return wrapped

    yield make
    problems = []
    for wrapped, context in opened:
        problems += wrapped.unexpected()
        context.close()
    assert not problems, f"JavaScript console errors: {problems}"
