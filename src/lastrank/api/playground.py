"""GET /playground: a page to try the server in a browser (static/playground.html).

Pick a model (from /v1/models), type a query, paste documents or load a .txt/.jsonl file, and see the ranked
list from POST /v1/rerank with its scores, tokens, latency and search units. When the chosen model's
/v1/models entry says `images` (jina-reranker-m0), the page also takes image documents and an image query
(file picker, drag and drop, paste), read in the browser and sent as {"image": "<data URI>"}; results show
their thumbnails (the CSP's `img-src data:`). For a text-only model those controls are hidden. The page is
one self-contained HTML file (inline CSS and vanilla JS, no build step, nothing from a CDN), so it works
offline.

The page itself needs no API key: it holds no data. Its API calls send the key typed into its key field
(kept in the tab's sessionStorage only), so they are checked like any other client's.

It is served with a Content-Security-Policy that allows only its own inline <style> and <script> (by their
SHA-256, computed here from the file) and requests to this server: even an injected script or a reference
to an outside asset would not run or load.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from lastrank.images import MAX_IMAGE_BYTES

PAGE = "playground.html"
MAX_IMAGE_BYTES_MARK = "__MAX_IMAGE_BYTES__"  # in the page's <body data-max-image-bytes>

router = APIRouter()


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def content_security_policy(html: str) -> str:
    """The page's policy: its own inline blocks (hashed, exactly as served) and this server, nothing else."""
    styles = " ".join(_csp_hash(s) for s in re.findall(r"<style>(.*?)</style>", html, re.S))
    scripts = " ".join(_csp_hash(s) for s in re.findall(r"<script>(.*?)</script>", html, re.S))
    return ("default-src 'none'; "
            f"style-src {styles}; script-src {scripts}; "
            "connect-src 'self'; img-src data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@lru_cache(maxsize=1)
def page() -> tuple[str, str]:
    """-> (html, its Content-Security-Policy), read once from the package data."""
    html = resources.files("lastrank.api").joinpath("static", PAGE).read_text(encoding="utf-8")
    # The one per-server fact the page needs before a request: the size limit of one image, to refuse a
    # larger file before uploading it (the server checks it again).
    html = html.replace(MAX_IMAGE_BYTES_MARK, str(MAX_IMAGE_BYTES))
    return html, content_security_policy(html)


@router.get("/playground", include_in_schema=False)
async def playground() -> HTMLResponse:
    html, csp = page()
    return HTMLResponse(html, headers={
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",  # a new server version brings its page at once
    })


__all__ = ["router", "content_security_policy", "page"]
