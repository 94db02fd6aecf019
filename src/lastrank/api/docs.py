"""/docs (Swagger UI) and /redoc (ReDoc), served with their assets by this server so they work offline.

FastAPI's own pages load their JavaScript and CSS from a CDN (cdn.jsdelivr.net) and a favicon from
fastapi.tiangolo.com, so on a machine without internet they are blank. Here the pages are FastAPI's own
HTML (`get_swagger_ui_html`, `get_redoc_html`) pointed at assets under /docs-assets/, and ReDoc is asked
not to load Google Fonts. The assets are the static files of the maintained PyPI package `fastapi-offline`
(MIT), which bundles Swagger UI (Apache-2.0) and ReDoc (MIT); only its files are used, not its code.
One line of ReDoc's script is changed as it is served: its side menu ends with "API docs by Redocly" and
an <img> of Redocly's logo from cdn.redoc.ly, behind no option. That URL is replaced by an empty `data:`
URI, whose load error ReDoc already handles by hiding the image (the link's text stays): no request leaves
this server, offline or online.

    install(app)      after FastAPI(..., docs_url=None, redoc_url=None)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs-assets"
# the only files served (no directory listing, no path from the client reaches the file system)
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
REDOC_CDN_LOGO = b'src:"https://cdn.redoc.ly/redoc/logo-mini.svg"'


def assets_dir() -> Path:
    """fastapi-offline's static/ folder, found without importing the package."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        raise RuntimeError("the fastapi-offline package (a lastrank dependency) is not installed: "
                           "pip install fastapi-offline")
    return Path(spec.origin).parent / "static"


def redoc_script(folder: Path) -> bytes:
    """redoc.standalone.js without its one request to a CDN (see the module's docstring)."""
    script = (folder / "redoc.standalone.js").read_bytes()
    return script.replace(REDOC_CDN_LOGO, b'src:"data:,"')


def install(app: FastAPI) -> None:
    folder = assets_dir()
    redoc_js = redoc_script(folder)  # 1 MB, read once

    def url(request: Request, path: str) -> str:
        return f"{request.scope.get('root_path', '')}{path}"  # behind a proxy that strips a prefix

    @app.get(f"{ASSETS_URL}/{{name}}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        if name not in ASSETS:
            raise HTTPException(404, f"no documentation asset {name!r}")
        cache = {"Cache-Control": "public, max-age=86400"}
        if name == "redoc.standalone.js":
            return Response(redoc_js, media_type=ASSETS[name], headers=cache)
        return FileResponse(folder / name, media_type=ASSETS[name], headers=cache)

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=url(request, app.openapi_url),
            title=f"{app.title} - Swagger UI",
            swagger_js_url=url(request, f"{ASSETS_URL}/swagger-ui-bundle.js"),
            swagger_css_url=url(request, f"{ASSETS_URL}/swagger-ui.css"),
            swagger_favicon_url=url(request, f"{ASSETS_URL}/favicon.png"),
            # no badge from validator.swagger.io: nothing leaves the machine
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=url(request, app.openapi_url),
            title=f"{app.title} - ReDoc",
            redoc_js_url=url(request, f"{ASSETS_URL}/redoc.standalone.js"),
            redoc_favicon_url=url(request, f"{ASSETS_URL}/favicon.png"),
            with_google_fonts=False,
        )
