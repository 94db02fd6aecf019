"""--cors-origin: opt-in, only the listed origins, keys still required."""

from __future__ import annotations

from fastapi.testclient import TestClient

from lastrank.api.app import create_app
from lastrank.api.settings import ServerSettings

PREFLIGHT = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,content-type"}


def test_cors_is_off_by_default(store, fake_scheduler):
    with TestClient(create_app(ServerSettings(), store, scheduler=fake_scheduler)) as c:
        r = c.post("/v1/rerank", headers={"Origin": "https://app.example.com"}, json={"query": "q", "documents": ["a"]})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        assert "access-control-allow-origin" not in c.options("/v1/rerank", headers=PREFLIGHT).headers


def test_listed_origins_only_and_keys_still_apply(store, fake_scheduler):
    store.create_key("browser-app")
    settings = ServerSettings(cors_origins=("https://app.example.com",))
    with TestClient(create_app(settings, store, scheduler=fake_scheduler)) as c:
        r = c.options("/v1/rerank", headers=PREFLIGHT)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = c.post("/v1/rerank", headers={"Origin": "https://app.example.com"}, json={"query": "q", "documents": ["a"]})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://app.example.com"
        r = c.options("/v1/rerank", headers={**PREFLIGHT, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
