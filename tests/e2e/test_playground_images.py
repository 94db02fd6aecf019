"""The playground with a model that ranks images (jina-reranker-m0), end to end: Debian's Chromium driven by
Playwright against a real `lastrank serve` of a tiny random-weight m0 checkpoint in the official layout
(float32, keys on), and against the real MiniLM (text only) of conftest.py.

What a user does, checked against the API's own answer to the same request: two PNG files and a text
document ranked (the page sends each image as the data URI of the file's bytes, the order, scores and bars
shown are the API's, each image result shows its thumbnail), an image as the query (chosen from the
keyboard), drag and drop and paste, client-side refusals (not an image, over the server's size limit) and
the server's 4xx for an image it cannot read shown verbatim; for a text-only model no image control is
there and the request is the text one. The scores of random weights mean nothing; only their agreement
with the API is tested. Shared helpers: tests/support/playground_page.py.
"""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from support.playground_page import check_against_api, enter_key, rank_and_capture, screenshot, shown_results
from support.server_process import served_with_key

QUERY = "a red circle on white"
TEXT_DOC = "A blue striped flag on a pole."


@pytest.fixture(scope="module")
def m0_server(tmp_path_factory):
    from lastrank.checkpoints.m0 import make_m0_checkpoint

    folder = tmp_path_factory.mktemp("playground-m0")
    checkpoint = make_m0_checkpoint(folder / "m0", "tiny", seed=11, dtype="float32")
    with served_with_key(checkpoint, folder) as url_key:
        yield url_key


def png(draw, size) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, "white")
    draw(ImageDraw.Draw(image), size)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> dict:
    """name -> (path, bytes, (width, height)): two PNG files of different sizes and aspect ratios."""
    folder = tmp_path_factory.mktemp("pngs")
    shapes = {
        "circle.png": (lambda d, s: d.ellipse((8, 8, s[0] - 8, s[1] - 8), fill=(210, 30, 30)), (96, 64)),
        "stripes.png": (lambda d, s: [d.rectangle((0, y, s[0], y + 5), fill=(20, 60, 200)) for y in range(0, s[1], 12)],
                        (48, 80)),
    }
    out = {}
    for name, (draw, size) in shapes.items():
        data = png(draw, size)
        (folder / name).write_bytes(data)
        out[name] = (folder / name, data, size)
    return out


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def dispatch_files(page, selector: str, event: str, files: list[tuple]) -> bool:
    """Fires a `drop` or `paste` event carrying files [(name, type, bytes or a size of zero bytes)] at
    `selector`, as a drag from the desktop or a paste from the clipboard would. -> whether the page took it
    (called preventDefault)."""
    specs = [(name, kind, base64.b64encode(data).decode() if isinstance(data, bytes) else None,
              data if isinstance(data, int) else 0) for name, kind, data in files]
    return page.evaluate("""([selector, event, specs]) => {
        const dt = new DataTransfer();
        for (const [name, type, b64, size] of specs) {
            const bytes = b64 === null ? new Uint8Array(size) : Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            dt.items.add(new File([bytes], name, {type}));
        }
        const init = {bubbles: true, cancelable: true};
        const e = event === 'paste' ? new ClipboardEvent('paste', {...init, clipboardData: dt})
                                    : new DragEvent(event, {...init, dataTransfer: dt});
        return !document.querySelector(selector).dispatchEvent(e);
    }""", [selector, event, specs])


def thumb_names(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector + " .thumb-name", "els => els.map(e => e.textContent)")


def test_image_documents_and_an_image_query_rank_as_the_api(new_page, m0_server, pngs, tmp_path):
    _, key = m0_server
    p = new_page(m0_server[0], viewport={"width": 1100, "height": 900})
    # Playwright intercepts file choosers once a listener exists; one from the start, so the interception is
    # on before the keyboard opens the picker (expect_file_chooser alone turns it on late now and then)
    p.page.on("filechooser", lambda chooser: None)
    page = p.open()
    enter_key(page, key)
    assert page.locator("#images-row").is_visible() and page.locator("#query-image-row").is_visible()
    assert "text and images" in page.inner_text("#model-info")

    # two PNG files from the picker and one text document
    page.fill("#query", QUERY)
    page.fill("#documents", TEXT_DOC)
    page.set_input_files("#image-files", [str(pngs[n][0]) for n in ("circle.png", "stripes.png")])
    page.locator("#image-thumbs li").nth(1).wait_for()
    assert thumb_names(page, "#image-thumbs") == ["circle.png", "stripes.png"]
    assert "Added 2 image documents (2 in all)" in page.inner_text("#file-status")
    sent, received = rank_and_capture(page, lambda: page.click("#submit"))
    documents = [TEXT_DOC, {"image": data_uri(pngs["circle.png"][1])}, {"image": data_uri(pngs["stripes.png"][1])}]
    assert sent["query"] == QUERY and sent["return_documents"] is False
    api = check_against_api(page, m0_server, sent, received, documents, [TEXT_DOC, "circle.png", "stripes.png"])
    assert len({r["relevance_score"] for r in api["results"]}) == 3  # distinct scores: the order is the model's
    shown = shown_results(page)
    assert [r["thumbnail"] for r in shown] == [None if i == 0 else documents[i]["image"] for i in
                                               (r["index"] for r in shown)]
    # the thumbnails are rendered images of the files' own sizes
    sizes = page.eval_on_selector_all("#results img", "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")
    assert sorted(map(tuple, sizes)) == sorted(pngs[n][2] for n in ("circle.png", "stripes.png"))
    assert [t for t in page.eval_on_selector_all("#results .index", "els => els.map(e => e.textContent)")
            if "image" in t] == [f"index {i} · image" for i in (r["index"] for r in shown) if i > 0]
    screenshot(page, tmp_path, "playground-images.png")

    # an image as the query, chosen from the keyboard: Tab from the text query to its picker, Space opens it
    page.focus("#query")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "query-image"
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files(str(pngs["stripes.png"][0]))
    page.locator("#query-thumbs li").wait_for()
    assert page.is_disabled("#query")  # the image is the query now
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Remove image query stripes.png"
    sent, received = rank_and_capture(page, lambda: page.keyboard.press("Control+Enter"))
    assert sent["query"] == {"image": data_uri(pngs["stripes.png"][1])}
    check_against_api(page, m0_server, sent, received, documents, [TEXT_DOC, "circle.png", "stripes.png"])
    assert "ranked against the image query stripes.png" in page.inner_text("#summary")
    page.keyboard.press("Enter")  # the focused Remove: back to the text query, which has the focus
    assert page.locator("#query-thumbs li").count() == 0 and not page.is_disabled("#query")
    assert page.evaluate("document.activeElement.id") == "query"

    # a phone-width window: the image results fit it
    page.set_viewport_size({"width": 360, "height": 740})
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    p.assert_only_this_server()


def test_drop_paste_remove_and_refusals(new_page, m0_server, pngs):
    from lastrank.images import MAX_IMAGE_BYTES

    url, key = m0_server
    p = new_page(url)
    page = p.open()
    enter_key(page, key)
    circle, stripes = pngs["circle.png"][1], pngs["stripes.png"][1]

    # drop on the documents' box, paste into the documents text box, drop on the query's box
    assert dispatch_files(page, "#image-drop", "drop", [("circle.png", "image/png", circle)])
    assert dispatch_files(page, "#documents", "paste", [("image.png", "image/png", stripes)])
    assert dispatch_files(page, "#query-drop", "drop", [("circle.png", "image/png", circle)])
    page.locator("#query-thumbs li").wait_for()
    page.locator("#image-thumbs li").nth(1).wait_for()
    assert thumb_names(page, "#image-thumbs") == ["circle.png", "image.png"]
    assert page.evaluate("document.getElementById('documents').value") == ""  # the paste added no text

    # refused before any upload, each with its reason; the good file of the same drop is added
    assert dispatch_files(page, "#image-drop", "drop", [("notes.txt", "text/plain", b"not an image"),
                                                       ("huge.png", "image/png", MAX_IMAGE_BYTES + 1),
                                                       ("stripes.png", "image/png", stripes)])
    page.locator("#image-thumbs li").nth(2).wait_for()
    error = page.inner_text("#error")
    assert "notes.txt is not an image (text/plain)" in error
    limit = f"{MAX_IMAGE_BYTES:,} bytes"
    assert f"huge.png is 20.0 MiB ({MAX_IMAGE_BYTES + 1:,} bytes), more than this server's limit of 20 MiB ({limit})" \
        in error
    assert thumb_names(page, "#image-thumbs") == ["circle.png", "image.png", "stripes.png"]

    # Remove (the second): the next one's button takes the focus
    page.click("#image-thumbs li >> nth=1 >> button")
    assert thumb_names(page, "#image-thumbs") == ["circle.png", "stripes.png"]
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Remove image document stripes.png"

    sent, received = rank_and_capture(page, lambda: page.click("#submit"))
    documents = [{"image": data_uri(circle)}, {"image": data_uri(stripes)}]
    assert sent["query"] == {"image": data_uri(circle)}
    check_against_api(page, m0_server, sent, received, documents, ["circle.png", "stripes.png"])

    # a file that says it is a PNG but is not one passes the page's check; the server's 400 is shown verbatim
    page.set_input_files("#image-files", files=[{"name": "broken.png", "mimeType": "image/png",
                                                 "buffer": b"\x89PNG\r\n\x1a\n but not really"}])
    page.locator("#image-thumbs li").nth(2).wait_for()
    sent, received = rank_and_capture(page, lambda: page.click("#submit"))
    expected = httpx.post(url + "/v1/rerank", json=sent, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert expected.status_code == 400
    assert received["error"]["message"] == expected.json()["error"]["message"]
    assert page.inner_text("#error") == f"HTTP 400: {expected.json()['error']['message']}"
    assert "documents[2]" in page.inner_text("#error")
    p.assert_only_this_server()


def test_a_text_only_model_has_no_image_controls(open_page, server, m0_server, new_page, pngs):
    """The real MiniLM: no image control, drops and pastes of images left to the browser, the text request
    as before. Then a server whose list also has a text-only model: choosing it hides the controls and sends
    no image."""
    _, key = server
    p = open_page()
    page = p.open()
    enter_key(page, key)
    for selector in ("#images-row", "#query-image-row", "#image-files", "#query-image"):
        assert page.locator(selector).is_hidden(), selector
    assert not dispatch_files(page, "#documents", "paste", [("circle.png", "image/png", pngs["circle.png"][1])])
    assert not dispatch_files(page, "#documents", "drop", [("circle.png", "image/png", pngs["circle.png"][1])])
    page.fill("#query", QUERY)
    page.fill("#documents", TEXT_DOC + "\n" + QUERY)
    sent, received = rank_and_capture(page, lambda: page.click("#submit"))
    assert sent == {"query": QUERY, "documents": [TEXT_DOC, QUERY], "return_documents": True,
                    "model": received["model"]}
    assert page.locator("#results img").count() == 0
    p.assert_only_this_server()

    # the m0 server's list with a text-only model added: images added for m0 are kept but not sent to it
    url, key = m0_server

    def with_a_text_model(route):
        response = route.fetch()
        if response.status != 200:
            return route.fulfill(response=response)
        body = response.json()
        body["data"].append({**body["data"][0], "id": "a-text-model", "images": False})
        route.fulfill(json=body)

    p = new_page(url)
    p.page.route("**/v1/models", with_a_text_model)
    page = p.open()
    enter_key(page, key)
    page.set_input_files("#image-files", str(pngs["circle.png"][0]))
    page.locator("#image-thumbs li").wait_for()
    page.select_option("#model", "a-text-model")
    assert page.locator("#images-row").is_hidden()
    assert "text only: the 1 image you added is not sent" in page.inner_text("#model-info")
    page.fill("#query", QUERY)
    page.fill("#documents", TEXT_DOC)
    sent, _ = rank_and_capture(page, lambda: page.click("#submit"))
    assert sent["documents"] == [TEXT_DOC] and sent["query"] == QUERY and sent["model"] == "a-text-model"
    assert page.inner_text("#error").startswith("HTTP 404: ")  # this server has no such model: its answer
    page.select_option("#model", "jina-reranker-m0")
    assert page.locator("#images-row").is_visible() and thumb_names(page, "#image-thumbs") == ["circle.png"]
    p.assert_only_this_server()
