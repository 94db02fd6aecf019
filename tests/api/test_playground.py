"""GET /playground: served without a key, self-contained (no outside URL), locked down by its CSP.

The page's behaviour in a real browser is tested in tests/e2e/test_playground_browser.py."""

from __future__ import annotations

import base64
import hashlib
import re

URL_ATTR = re.compile(r"""(?:src|href|action)\s*=\s*["']([^"']*)["']""", re.I)


def test_page_is_served_as_html(client):
    resp = client.get("/playground")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    html = resp.text
    assert "<title>lastrank playground</title>" in html
    # it calls this server's routes, relative to the page
    assert '"v1/models"' in html and '"v1/rerank"' in html
    assert 'aria-live="polite"' in html and 'role="alert"' in html
    assert '<meta name="viewport"' in html


def test_page_references_no_external_url(client):
    html = client.get("/playground").text
    # every src/href/action is inline data or relative to this server; no absolute URL appears anywhere
    # (inline CSS and script included), so nothing is loaded from a CDN, a font service or elsewhere
    assert URL_ATTR.findall(html) == ["data:,", "models"]  # the catalogue page, beside it (api/catalogue.py)
    assert re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I) == []
    assert "@import" not in html and "url(" not in html
    assert re.findall(r"<script[^>]*\bsrc\s*=", html, re.I) == []
    assert re.findall(r"<link[^>]*rel=[\"']?stylesheet", html, re.I) == []


def test_page_needs_no_key_while_the_api_does(make_client, store):
    _, key = store.create_key("playground")
    client = make_client()
    assert client.get("/v1/models").status_code == 401  # keys are on
    resp = client.get("/playground")
    assert resp.status_code == 200 and "lastrank playground" in resp.text
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_content_security_policy_allows_only_the_pages_own_blocks(client):
    resp = client.get("/playground")
    csp = dict(part.strip().split(" ", 1) for part in resp.headers["content-security-policy"].split(";"))
    html = resp.text
    styles = re.findall(r"<style>(.*?)</style>", html, re.S)
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(styles) == 1 and len(scripts) == 1  # one inline block of each, hashed as served
    assert csp["default-src"] == "'none'"
    assert csp["style-src"] == _sha256(styles[0])
    assert csp["script-src"] == _sha256(scripts[0])
    assert csp["connect-src"] == "'self'"
    # images: only data: URIs (the thumbnails of images read in the browser), no blob:, no server, no other
    assert csp["img-src"] == "data:"
    assert "unsafe-inline" not in resp.headers["content-security-policy"]
    # no inline event handler attribute (the CSP would block it): every handler is added by the script
    assert re.findall(r"<[^>]*\son[a-z]+\s*=", html, re.I) == []


def test_page_carries_the_servers_image_size_limit(client):
    """The page refuses an image file larger than the server's limit before uploading it: it reads the
    limit from the page, written there from lastrank.images (one definition of it)."""
    from lastrank.images import MAX_IMAGE_BYTES

    html = client.get("/playground").text
    assert f'<body data-max-image-bytes="{MAX_IMAGE_BYTES}">' in html
    assert "__MAX_IMAGE_BYTES__" not in html
    # image controls are there, hidden until the chosen model's /v1/models entry says "images": true
    for row in ('<div id="query-image-row" hidden>', '<div id="images-row" hidden>'):
        assert row in html
    assert 'accept="image/*"' in html and "{ image: " in html


def test_page_is_read_as_package_resource():
    """The page is read with importlib.resources (as from an installed wheel; pyproject's package-data
    ships static/*.html), not from a path relative to a source checkout."""
    from importlib import resources

    from lastrank.api.playground import page

    html, _ = page()
    assert resources.files("lastrank.api").joinpath("static", "playground.html").is_file()
    assert html.startswith("<!doctype html>")
