"""/docs and /redoc work offline: their pages reference only this server, which serves the assets."""

from __future__ import annotations

import re

import pytest

URL_ATTR = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


def referenced_urls(html: str) -> list[str]:
    """Every src/href in the page, plus any absolute http(s) URL anywhere in it (inline script included)."""
    return URL_ATTR.findall(html) + re.findall(r"https?://[^\s\"'<>)]+", html)


@pytest.mark.parametrize(("page", "assets"), [
    ("/docs", ["swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"]),
    ("/redoc", ["redoc.standalone.js", "favicon.png"]),
])
def test_docs_pages_reference_only_local_assets_which_are_served(client, page, assets):
    resp = client.get(page)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    urls = referenced_urls(resp.text)
    assert urls, "the page references its assets"
    assert all(u.startswith("/") and not u.startswith("//") for u in urls), urls  # no CDN, no fonts
    assert "/openapi.json" in resp.text
    for name in assets:
        url = f"/docs-assets/{name}"
        assert url in urls
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000  # the real file, not an empty stand-in
    # the scripts are the real libraries
    js = "swagger-ui-bundle.js" if page == "/docs" else "redoc.standalone.js"
    body = client.get(f"/docs-assets/{js}").text
    assert ("SwaggerUIBundle" if page == "/docs" else "Redoc") in body


def test_only_known_assets_are_served(client):
    for name in ("nope.js", "..%2Fcore.py", "%2E%2E%2F%2E%2E%2Fpyproject.toml"):
        resp = client.get(f"/docs-assets/{name}")
        assert resp.status_code == 404
        assert "error" in resp.json()  # the API's error shape, not a bare file-system error
    assert client.get("/openapi.json").status_code == 200
