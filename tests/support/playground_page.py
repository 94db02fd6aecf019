"""Shared by the playground's browser tests (tests/e2e): a `lastrank serve` with keys on, a recorded browser
page on /playground, and the checks of what the page shows against the API's own answer.

Playwright's own browser download is not used (it is not reachable here): scripts/test.sh installs Debian's
chromium. Screenshots go to $LASTRANK_SCREENSHOT_DIR when set (docs/playground.png is one), else tmp.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000


class Page:
    """A fresh browser context on /playground that records every request and console error."""

    def __init__(self, browser, url: str, **context_options):
        self.url = url
        self.context = browser.new_context(**context_options)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.requests: list[str] = []
        self.console_errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.on("pageerror", lambda e: self.console_errors.append(str(e)))

    def open(self):
        self.page.goto(self.url + "/playground")
        return self.page

    def close(self):
        self.context.close()

    def assert_only_this_server(self):
        """Nothing was fetched from anywhere else, and the CSP blocked nothing."""
        assert self.requests, "the page made requests"
        outside = [u for u in self.requests if not (u.startswith(self.url + "/") or u.startswith("data:"))]
        assert outside == []
        # Chromium logs each 4xx the page gets (the 401 that reveals the key field, the errors tested here)
        errors = [e for e in self.console_errors if not e.startswith(
            "Failed to load resource: the server responded with a status of 4")]
        assert errors == []  # no script error, no CSP violation


def screenshot(page, tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("LASTRANK_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a real rendering, not a blank image
    return path


# The page's CSP forbids eval: wait_for_function gets arrow functions (a bare expression is eval'ed in the page).


def enter_key(page, key: str) -> None:
    """The server has keys: the page shows the key field after /v1/models' 401; a key loads the models."""
    page.locator("#api-key").wait_for(state="visible")
    assert "401" in page.locator("#error").inner_text()
    page.fill("#api-key", key)
    page.press("#api-key", "Enter")
    page.locator("#model option").first.wait_for(state="attached")
    page.wait_for_function("() => document.getElementById('error').textContent === ''")


def shown_results(page) -> list[dict]:
    """Each result as shown: its index, score, text (an image document's: its name), bar width and
    thumbnail (an image document's <img> src, else None)."""
    return page.eval_on_selector_all("#results li", """items => items.map(li => ({
        index: Number(li.dataset.index),
        score: li.querySelector('.score').textContent,
        text: li.querySelector('.doc').textContent,
        width: li.querySelector('.bar span').style.width,
        thumbnail: li.querySelector('img') ? li.querySelector('img').getAttribute('src') : null}))""")


def rank_and_capture(page, submit) -> tuple[dict, dict]:
    """Runs `submit()` and returns (the JSON body the page sent to /v1/rerank, the JSON it got back), once
    the page has shown the answer."""
    with page.expect_response(lambda r: r.url.endswith("/v1/rerank")) as info:
        submit()
    response = info.value
    page.wait_for_function("() => document.querySelector('#results').getAttribute('aria-busy') === null")
    assert response.status == 200 or page.inner_text("#error").startswith(f"HTTP {response.status}: ")
    return json.loads(response.request.post_data), response.json()


def check_against_api(page, server, sent: dict, received: dict, documents: list, shown_texts: list[str] | None = None
                      ) -> dict:
    """What the page shows is the API's answer, and the API gives the same answer to the same request.
    `documents`: what the page must have sent; `shown_texts`: what each shows (default: the documents).
    -> the API's independent answer."""
    url, key = server
    assert sent["documents"] == documents
    shown_texts = documents if shown_texts is None else shown_texts
    independent = httpx.post(url + "/v1/rerank", json=sent, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert independent.status_code == 200, independent.text
    api = independent.json()
    order = [r["index"] for r in api["results"]]
    assert order == [r["index"] for r in received["results"]]
    shown = shown_results(page)
    assert [r["index"] for r in shown] == order
    assert [r["score"] for r in shown] == [f"score {r['relevance_score']:.4f}" for r in api["results"]]
    assert [r["text"] for r in shown] == [shown_texts[i] for i in order]
    # the bars: the score on [0, 1] by the model's score kind in /v1/models (cosine: (1 + cosine) / 2)
    kinds = {m["id"]: m.get("score") for m in httpx.get(
        url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]}
    units = [(1 + s) / 2 if kinds.get(api["model"]) == "cosine" else s
             for s in (r["relevance_score"] for r in api["results"])]
    widths = [float(r["width"].removesuffix("%")) for r in shown]
    assert widths == pytest.approx([100 * min(1, max(0, u)) for u in units], abs=0.05 + 1e-9)  # shown to 0.1 %
    assert page.inner_text("#stat-tokens") == str(api["usage"]["total_tokens"])
    assert page.inner_text("#stat-units") == str(api["meta"]["billed_units"]["search_units"])
    assert page.inner_text("#stat-model") == api["model"]
    assert page.inner_text("#stat-latency").endswith(" ms")
    assert page.inner_text("#stat-request-id") == received["id"]
    return api
