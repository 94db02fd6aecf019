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


# What a script or stylesheet would load by itself: an element's src, a CSS url() or @import, a fetch().
# (A link's href is fetched only when the user clicks it.)
LOADED_URL = re.compile(r"""src\s*[:=]\s*["'`](https?://[^"'`]+)|url\(\s*["']?(https?://[^)"']+)|"""
                        r"""@import[^;]*?(https?://[^"');]+)|fetch\(\s*["'`](https?://[^"'`]+)""")


def loaded_urls(text: str) -> list[str]:
    return [next(g for g in m.groups() if g) for m in LOADED_URL.finditer(text)]


@pytest.mark.parametrize("name", ["redoc.standalone.js", "swagger-ui-bundle.js", "swagger-ui.css"])
def test_the_served_assets_load_nothing_from_elsewhere(client, name):
    """ReDoc's side menu shows Redocly's logo from cdn.redoc.ly (an <img>, behind no option): the script is
    served with that URL replaced (api/docs.py), so /redoc makes no request to another host."""
    from lastrank.api.docs import assets_dir

    served = client.get(f"/docs-assets/{name}").text
    assert loaded_urls(served) == []
    if name == "redoc.standalone.js":  # the package's own file does load it: the rewrite is what removes it
        assert loaded_urls((assets_dir() / name).read_text()) == ["https://cdn.redoc.ly/redoc/logo-mini.svg"]
        assert 'src:"data:,"' in served and "API docs by Redocly" in served  # the link's text stays


def test_the_url_finder_finds_what_a_page_would_load():
    text = ('createElement("img",{src:"https://cdn.x/logo.svg"}) background:url(https://fonts.x/a.woff) '
            '@import "https://fonts.googleapis.com/css"; fetch("https://api.x/y") {href:"https://redocly.com/"}')
    assert loaded_urls(text) == ["https://cdn.x/logo.svg", "https://fonts.x/a.woff", "https://fonts.googleapis.com/css",
                                 "https://api.x/y"]
