"""Background health probes (router/providers.py, RemoteProvider.probe): an idle provider whose breaker is open is
checked every probe_interval_s and comes back when it answers, without a client request; /v1/models shows the
last probe. The upstream is a small real app on a free port that fails, then recovers."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from support.live_server import AppServer

from lastrank.router import parse_config
from lastrank.router.config import ModelConfig, ProviderConfig
from lastrank.router.providers import RemoteProvider
from lastrank.types import RerankRequest


class FlakyTei:
    """A TEI-dialect upstream: /health and /rerank answer 503 while `up` is False."""

    def __init__(self):
        self.up = False
        self.health_calls = 0
        self.rerank_calls = 0
        app = FastAPI()

        @app.get("/health")
        async def health():
            self.health_calls += 1
            return JSONResponse({}, status_code=200 if self.up else 503)

        @app.post("/rerank")
        async def rerank(body: dict):
            self.rerank_calls += 1
            if not self.up:
                return JSONResponse({"error": "loading"}, status_code=503)
            return [{"index": i, "score": 0.5 + 0.1 * i} for i in range(len(body["texts"]))][::-1]

        self.server = AppServer(app)
        self.url = self.server.url

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.stop()


def test_probe_defaults_are_on_where_free_and_off_where_billed():
    text = """
[[models]]
name = "m"
[[models.providers]]
name = "t"
dialect = "tei"
base_url = "http://127.0.0.1:1"
score = "cosine"
[[models.providers]]
name = "j"
dialect = "jina"
base_url = "http://127.0.0.1:2"
score = "cosine"
[[models.providers]]
name = "j2"
dialect = "jina"
base_url = "http://127.0.0.1:3"
score = "cosine"
probe_interval_s = 30
"""
    t, j, j2 = parse_config(text).models[0].providers
    assert (t.probe_interval_s, j.probe_interval_s, j2.probe_interval_s) == (5.0, 0.0, 30.0)
    from lastrank.router import ConfigError

    with pytest.raises(ConfigError, match=r"providers\[2\]\.probe_interval_s: must be a number >= 0"):
        parse_config(text.replace("probe_interval_s = 30", "probe_interval_s = -1"))


def test_an_idle_open_provider_is_closed_by_the_background_probe_when_it_recovers():
    cfg = ProviderConfig(name="tei-a", dialect="tei", score="cosine", timeout_s=5.0, probe_interval_s=0.05,
                         base_url="")
    # a cooldown far longer than the test: only the probe can bring the provider back in time
    model = ModelConfig(name="m", providers=(cfg,), failure_threshold=1, cooldown_s=600.0)

    async def wait_for(condition, seconds=15.0):
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.02)

    async def go(upstream: FlakyTei):
        import dataclasses

        p = RemoteProvider(dataclasses.replace(cfg, base_url=upstream.url), model)
        await p.start()
        try:
            assert p.describe()["probe"] == {"interval_s": 0.05, "sent": 0, "last": None}
            await asyncio.sleep(0.3)
            assert upstream.health_calls == 0  # closed: a healthy provider gets no probe traffic
            with pytest.raises(Exception):
                await p.call(RerankRequest(query="q", documents=["a", "b"]), 5.0)
            p.breaker.failure()  # the router's verdict on that failure (threshold 1): open
            assert p.breaker.state == "open"
            await wait_for(lambda: upstream.health_calls >= 3)
            d = p.describe()
            assert d["health"]["state"] == "open" and d["health"]["opened"] == 1  # failed probes re-open nothing
            assert d["probe"]["last"]["ok"] is False and "503" in d["probe"]["last"]["error"]
            assert upstream.rerank_calls == 1  # probes ask /health, never the model
            upstream.up = True
            await wait_for(lambda: p.breaker.state == "closed")
            d = p.describe()
            assert d["probe"]["last"]["ok"] is True and "error" not in d["probe"]["last"]
            assert d["probe"]["last"]["at"].endswith("+00:00") and d["probe"]["sent"] >= 4
            assert p.breaker.closed_again == 1 and upstream.rerank_calls == 1
            calls = upstream.health_calls
            await asyncio.sleep(0.3)
            assert upstream.health_calls == calls  # closed again: no more probes
            result = await p.call(RerankRequest(query="q", documents=["a", "b"]), 5.0)
            assert [r.index for r in result.results] == [1, 0]
        finally:
            await p.stop()
        assert p._probe_task is None

    with FlakyTei() as upstream:
        asyncio.run(go(upstream))


def test_a_probe_where_the_dialect_has_no_health_route_is_a_one_document_rerank():
    sent = []
    up = {"ok": False}

    def handle(request: httpx.Request):
        sent.append((request.method, request.url.path, request.content))
        if not up["ok"]:
            return httpx.Response(502, json={"detail": "bad gateway"})
        return httpx.Response(200, json={"results": [{"index": 0, "relevance_score": 0.3}]})

    cfg = ProviderConfig(name="j", dialect="jina", base_url="http://jina", score="sigmoid", probe_interval_s=30.0)
    p = RemoteProvider(cfg, ModelConfig(name="m", providers=(cfg,), cooldown_s=600.0),
                       transport=httpx.MockTransport(handle))

    async def go():
        await p.start()
        try:
            assert await p.probe() is None  # closed: nothing to probe
            p.breaker.trip()
            assert await p.probe() is False and p.breaker.state == "open"
            up["ok"] = True
            assert await p.probe() is True and p.breaker.state == "closed"
        finally:
            await p.stop()

    asyncio.run(go())
    assert [(m, path) for m, path, _ in sent] == [("POST", "/v1/rerank")] * 2
    from types import SimpleNamespace

    from lastrank.api.metrics import ProviderCollector
    from lastrank.router.router import RoutedRunner

    served = SimpleNamespace(name="m", scheduler=RoutedRunner(ModelConfig(name="m", providers=(cfg,)), [p]))
    [family] = [f for f in ProviderCollector(lambda: [served]).collect() if f.name == "lastrank_router_provider_probes"]
    assert {s.labels["result"]: s.value for s in family.samples if s.name.endswith("_total")} == {"ok": 1, "failed": 1}
    import json

    assert json.loads(sent[0][2])["documents"] == ["health check"]
