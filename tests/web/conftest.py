"""Browser tests: the built UI (web/dist) served by a real API on a free
port, driven in Debian's headless Chromium through Playwright (no browser
download). Any console error fails the test, except the HTTP error statuses a
test says it provokes on purpose. Each test leaves a screenshot of its last
page in test-artifacts/screenshots/ (git-ignored)."""

import os
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

REPO = Path(__file__).resolve().parent.parent.parent
CHROMIUM = os.environ.get("TUNEHOUSE_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
_FAILED_LOAD = re.compile(r"Failed to load resource: the server responded with a status of (\d{3})")


class ConsoleErrors:
    def __init__(self) -> None:
        self.messages: list[str] = []
        self.allowed_statuses: set[int] = set()

    def allow_status(self, *statuses: int) -> None:
        """The test provokes these HTTP errors (a wrong key, a bad file): the
        browser's own "Failed to load resource" lines for them are expected."""
        self.allowed_statuses.update(statuses)

    def add(self, text: str) -> None:
        failed = _FAILED_LOAD.search(text)
        if failed and int(failed.group(1)) in self.allowed_statuses:
            return
        self.messages.append(text)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def console_errors() -> ConsoleErrors:
    return ConsoleErrors()


@pytest.fixture
def page(browser, console_errors, request):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.on("console", lambda message: console_errors.add(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: console_errors.messages.append(f"uncaught: {error}"))
    yield page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    context.close()
    assert console_errors.messages == [], f"browser console errors: {console_errors.messages}"


def sign_in(page, site) -> None:
    """Sign in with the site's key and wait for the signed-in layout."""
    page.goto(site["url"] + "/")
    page.get_by_test_id("api-key-input").fill(site["key"])
    page.get_by_test_id("sign-in-submit").click()
    expect(page.get_by_test_id("sign-out")).to_be_visible()


@pytest.fixture
def api(site):
    """The API of a module's `site` (tests/web/test_ui.py), as its user, over HTTP."""
    with httpx.Client(base_url=site["url"], headers={"Authorization": f"Bearer {site['key']}"}, timeout=60) as client:
        yield client
