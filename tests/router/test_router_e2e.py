"""The router with real processes: `lastrank serve --config` in front of two `lastrank serve --model minilm`
upstreams (one spoken to in lastrank's own dialect, one in TEI's) and a small fake upstream (Jina dialect) that
answers 500s, 429s, or too slowly, on demand. One upstream is killed mid-load.

Checked: while one provider is healthy no client request fails, in any of the client's dialects; the fake's
breaker opens and a probe closes it again (/v1/models says so); the router's ledger is exact: one row per 200,
named by its X-Request-Id, naming the provider that answered, none for a request that failed everywhere, and as
many rows for upstream B as B's own ledger holds (no double charge); no upstream key appears in the router's log,
its responses, its /v1/models or its database, and the fake sees only its own key (never the client's).

Timing: each check that a breaker is still open (or a provider still held) runs within a window that starts when
it opened; the cooldown (COOLDOWN_S) and the fake's Retry-After (HOLD_S) are far longer than such a window on a
loaded machine (the window is measured and named if it ever is not), and the steps that need the cooldown or the
hold over poll /v1/models for the next state instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from support.live_server import AppServer
from support.server_process import ServerProcess

COOLDOWN_S = 10.0  # the breaker's: longer than any "still open" check window (a few requests) under load
HOLD_S = 10  # the fake's Retry-After on a 429: likewise
# The router's timeout for the fake, and how long the fake's "slow" mode takes. The timeout must hold the fake's
# "ok" answer (a hop to upstream B, a fresh client: ~0.1 s, more on a loaded machine; 0.8 s before, which a stall
# could turn into a failed probe) and stay well under SLOW_S (so "slow" is always past it).
FAKE_TIMEOUT_S = 2.0
SLOW_S = 6.0
KEYS = {"A_KEY": "sk-upstream-a-secret-7f3e", "B_KEY": "sk-upstream-b-secret-91c2", "FAKE_KEY": "sk-fake-secret-55d0"}
QUERY = "how do plants make food from sunlight"
DOCS = ["Photosynthesis turns light, water and carbon dioxide into sugar in the leaves.",
        "The stock market closed higher on Friday.",
        "Chlorophyll absorbs sunlight, the energy plants use to make glucose.",
        "A recipe for tomato soup."]


class FakeUpstream:
    """A Jina-dialect upstream on a free port: `mode` ok (forwards to upstream B), 500, 429 or slow."""

    def __init__(self, forward_url: str, forward_key: str):
        self.mode = "ok"
        self.auth_seen: set[str] = set()
        self.calls = 0
        app = FastAPI()

        @app.post("/v1/rerank")
        async def rerank(request: Request):
            self.calls += 1
            self.auth_seen.add(request.headers.get("authorization", ""))
            if self.mode == "500":
                return JSONResponse({"detail": "internal error"}, status_code=500)
            if self.mode == "429":
                return JSONResponse({"detail": "slow down"}, status_code=429, headers={"retry-after": str(HOLD_S)})
            if self.mode == "slow":
                await asyncio.sleep(SLOW_S)
                return JSONResponse({"detail": "too late"}, status_code=500)
            async with httpx.AsyncClient() as c:
                r = await c.post(forward_url + "/v1/rerank", content=await request.body(),
                                 headers={"authorization": f"Bearer {forward_key}", "content-type": "application/json"},
                                 timeout=30)
            return JSONResponse(r.json(), status_code=r.status_code)

        self.server = AppServer(app)
        self.url, self.start, self.stop = self.server.url, self.server.start, self.server.stop


def make_key(db):
    from lastrank.store import Store

    store = Store(db)
    _, key = store.create_key("router")
    store.close()
    return key


CONFIG = """
[[models]]
name = "rerank"
policy = "priority"
failure_threshold = 2
cooldown_s = {cooldown}

[[models.providers]]
name = "fake"
dialect = "jina"
base_url = "{fake}"
api_key_env = "FAKE_KEY"
score = "cosine"
timeout_s = {fake_timeout}
probe_interval_s = 0  # (the default for jina) this test checks that a client request is the probe

[[models.providers]]
name = "a"
dialect = "lastrank"
base_url = "{a}"
api_key_env = "A_KEY"
timeout_s = 30

[[models.providers]]
name = "b"
dialect = "tei"
base_url = "{b}"
api_key_env = "B_KEY"
score = "cosine"
timeout_s = 30
"""

BODIES = {  # the client's dialects: route -> body
    "/v1/rerank": {"model": "rerank", "query": QUERY, "documents": DOCS},
    "/v2/rerank": {"model": "rerank", "query": QUERY, "documents": DOCS},
    "/rerank": {"model": "rerank", "query": QUERY, "texts": DOCS},
}


def ranked(route: str, body) -> list[tuple[int, float]]:
    items = body if route == "/rerank" else body["results"]
    return [(x["index"], x["score"] if route == "/rerank" else x["relevance_score"]) for x in items]


def test_router_over_real_upstreams(tmp_path, monkeypatch):
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    a_db, b_db, router_db = tmp_path / "a.db", tmp_path / "b.db", tmp_path / "router.db"
    a_key, b_key = make_key(a_db), make_key(b_db)
    monkeypatch.setenv("A_KEY", a_key)
    monkeypatch.setenv("B_KEY", b_key)
    keys = {"A_KEY": a_key, "B_KEY": b_key, "FAKE_KEY": KEYS["FAKE_KEY"]}
    client_key = make_key(router_db)
    a = ServerProcess("minilm", a_db, tmp_path / "a.log")
    b = ServerProcess("minilm", b_db, tmp_path / "b.log")
    fake = router = None
    texts: list[str] = []
    try:
        with ThreadPoolExecutor(2) as pool:  # both models load at once
            list(pool.map(lambda s: s.start(), (a, b)))
        fake = FakeUpstream(b.url, b_key)
        fake.start()
        config = tmp_path / "router.toml"
        config.write_text(CONFIG.format(fake=fake.url, a=a.url, b=b.url, cooldown=COOLDOWN_S, fake_timeout=FAKE_TIMEOUT_S))
        router = ServerProcess("minilm", router_db, tmp_path / "router.log", extra=["--config", str(config)])
        router.start()
        local = threading.local()  # one client per thread

        def client() -> httpx.Client:
            if not hasattr(local, "http"):
                local.http = httpx.Client(base_url=router.url, headers={"authorization": f"Bearer {client_key}"},
                                          timeout=60)
            return local.http

        http = client()
        answered: list[str] = []  # X-Request-Id of every 200

        def call(route="/v1/rerank"):
            r = client().post(route, json=BODIES[route])
            texts.append(r.text)
            assert r.status_code == 200, (route, r.status_code, r.text)
            answered.append(r.headers["x-request-id"])
            return ranked(route, r.json())

        def health() -> dict:
            r = http.get("/v1/models")
            texts.append(r.text)
            return {p["name"]: p["health"] for p in r.json()["data"][0]["providers"]}

        # the reference: upstream A asked directly; every routed answer has its indices, order and scores
        direct = httpx.post(a.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS},
                            headers={"authorization": f"Bearer {a_key}"}).json()
        reference = ranked("/v1/rerank", direct)
        assert [i for i, _ in reference][:2] in ([0, 2], [2, 0]) and reference[-1][1] < reference[0][1] - 0.1

        def wait_for(name, condition, seconds):
            """Poll /v1/models until `condition(health of provider name)` holds (a state the clock brings)."""
            deadline = time.monotonic() + seconds
            while not condition(h := health()[name]):
                assert time.monotonic() < deadline, (name, h)
                time.sleep(0.1)
            return h

        def within(opened_at: float, limit: float) -> str:
            took = time.monotonic() - opened_at
            assert took < limit, f"the check window took {took:.1f} s, not under {limit} s: the machine is too loaded"
            return f"{took:.1f} s"

        def same(got, route):
            assert [i for i, _ in got] == [i for i, _ in reference], (route, got)
            unit = route == "/rerank"  # TEI's [0, 1] score of a cosine model: (1 + cosine) / 2
            for (_, s), (_, want) in zip(got, reference):
                assert s == pytest.approx((1 + want) / 2 if unit else want, abs=1e-4)

        # 1. the fake answers 500: two failures open its breaker; no client request fails, and none goes to the
        #    fake while it is open (the window from its opening to the check is timed against the cooldown)
        fake.mode = "500"
        same(call("/v1/rerank"), "/v1/rerank")
        opened_at = time.monotonic()  # (an upper bound: it opened during the second call)
        for route in ["/v2/rerank", "/rerank", "/v1/rerank", "/v2/rerank", "/rerank"]:
            same(call(route), route)
        h = health()["fake"]
        took = within(opened_at, COOLDOWN_S)
        assert fake.calls == 2 and h["state"] == "open" and h["opened"] == 1, (took, h)

        # 2. healthy again: once the cooldown is over (half-open) the next request probes it and closes the breaker
        fake.mode = "ok"
        wait_for("fake", lambda h: h["state"] == "half_open", COOLDOWN_S + 30)
        assert fake.calls == 2  # nothing was sent to it while open
        same(call(), "/v1/rerank")
        assert health()["fake"]["state"] == "closed" and fake.calls == 3

        # 3. 429 with Retry-After: held (not tried again until then), breaker still closed, no client failure
        fake.mode = "429"
        held_at = time.monotonic()
        same(call("/v2/rerank"), "/v2/rerank")
        same(call("/v2/rerank"), "/v2/rerank")
        h = health()["fake"]
        took = within(held_at, HOLD_S)
        assert h["state"] == "closed" and h.get("held_for_s", 0) > 0 and fake.calls == 4, (took, h)

        # 4. slow past its timeout (FAKE_TIMEOUT_S): twice opens it again, each request answered by the next provider
        wait_for("fake", lambda h: "held_for_s" not in h, HOLD_S + 30)
        fake.mode = "slow"
        same(call(), "/v1/rerank")
        opened_at = time.monotonic()
        same(call(), "/v1/rerank")
        h = health()["fake"]
        took = within(opened_at, COOLDOWN_S)
        assert h["state"] == "open" and fake.calls == 6, (took, h)

        # 5. kill upstream A mid-load (the fake is out): every request is answered by A, then B. The load runs until
        #    enough answers came after the kill (each request after it asks A first until A's breaker opens), not
        #    for a fixed time that a stalled machine could spend before the kill.
        fake.mode = "500"
        stop = threading.Event()
        failures: list[str] = []

        def load(route):
            while not stop.is_set():
                try:
                    same(call(route), route)
                except AssertionError as e:
                    failures.append(str(e)[:300])

        def answers_grow_by(n: int, seconds: float = 60.0) -> None:
            target, deadline = len(answered) + n, time.monotonic() + seconds
            while len(answered) < target and not failures:
                assert time.monotonic() < deadline, f"under {n} answers in {seconds} s"
                time.sleep(0.05)

        threads = [threading.Thread(target=load, args=(r,)) for r in BODIES]
        for t in threads:
            t.start()
        try:
            answers_grow_by(3)  # A answering under load
            a.kill()
            answers_grow_by(6)  # then B, after the kill
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not failures, failures
        assert health()["a"]["state"] in ("open", "half_open")

        # 6. every provider out: a 503 with Retry-After, and no ledger row for it
        b.kill()
        r = http.post("/v1/rerank", json=BODIES["/v1/rerank"])
        texts.append(r.text)
        assert r.status_code == 503 and "retry-after" in r.headers
        failed_id = r.headers["x-request-id"]
        http.close()
    finally:
        for p in (router, a, b):
            if p is not None:
                p.stop()
        if fake is not None:
            fake.stop()

    from lastrank.store import Store

    with Store(router_db) as store:
        rows = store.list_usage()
    assert sorted(r.request_id for r in rows) == sorted(answered)  # one row per 200, exactly
    assert failed_id not in {r.request_id for r in rows}
    by_provider = {p: sum(r.provider == p for r in rows) for p in ("fake", "a", "b")}
    assert by_provider["fake"] == 1 and by_provider["a"] >= 1 and by_provider["b"] >= 1
    assert sum(by_provider.values()) == len(rows)
    with Store(b_db) as store:  # B billed exactly what the router got from it (directly, or through the fake)
        assert store.count_usage() == by_provider["b"] + by_provider["fake"]
    assert fake.auth_seen == {f"Bearer {keys['FAKE_KEY']}"}  # its own key only; never the client's
    logs = (tmp_path / "router.log").read_text()
    assert "provider fake of rerank failed" in logs  # the log does speak of the failures ...
    assert "provider a of rerank failed (connection failed" in logs  # A was killed under load
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("router.db*"))
    for secret in keys.values():  # ... but no key is in it, in any response or in the router's database
        assert secret not in logs and not any(secret in t for t in texts) and secret.encode() not in stored
