"""API keys, per-key rate limits, overload, deadlines and client disconnects (fake scheduler)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from lastrank.api.auth import bearer_token
from lastrank.api.limits import RateLimiter

Q = "q words"
D = ["q words here", "nothing"]
INFERENCE = [("post", "/v1/rerank", {"query": Q, "documents": D}),
             ("post", "/v2/rerank", {"query": Q, "documents": D}),
             ("post", "/rerank", {"query": Q, "texts": D}),
             ("post", "/rerank", {"query": Q, "documents": D}),
             ("get", "/v1/models", None)]


def call(client, method, path, body, key=None, scheme="Bearer"):
    headers = {} if key is None else {"Authorization": f"{scheme} {key}"}
    if method == "get":
        return client.get(path, headers=headers)
    return client.post(path, json=body, headers=headers)


def test_bearer_parsing():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("BEARER abc") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None
    assert bearer_token(None) is None


def test_open_on_loopback_without_keys(client):
    for method, path, body in INFERENCE:
        assert call(client, method, path, body).status_code == 200, path
        # a client that always sends some header (JinaRerank sends "Bearer None") still works
        assert call(client, method, path, body, key="None").status_code == 200, path


def test_keys_required_once_one_exists(client, store):
    _, key = store.create_key("alice")
    for method, path, body in INFERENCE:
        r = call(client, method, path, body)
        assert r.status_code == 401, path
        assert r.json()["error"]["type"] == "authentication_error" and r.headers["www-authenticate"] == "Bearer"
        assert call(client, method, path, body, key="lr-000000000000-" + "x" * 43).status_code == 401
        assert call(client, method, path, body, key=key[:-1] + ("A" if key[-1] != "A" else "B")).status_code == 401
        assert call(client, method, path, body, key=key).status_code == 200, path
        assert call(client, method, path, body, key=key, scheme="bearer").status_code == 200, path
        assert call(client, method, path, body, key=key, scheme="Basic").status_code == 401, path
    for path in ["/health", "/ready", "/metrics"]:
        assert client.get(path).status_code == 200, path


def test_revoked_key_is_403_and_auth_stays_on(make_client, store):
    # without the verification cache (its TTL delay is tested in tests/api/test_reliability.py)
    client = make_client(key_cache_ttl_s=0)
    rec, key = store.create_key("bob")
    assert call(client, "post", "/v1/rerank", INFERENCE[0][2], key=key).status_code == 200
    store.revoke_key(rec.id)
    r = call(client, "post", "/v1/rerank", INFERENCE[0][2], key=key)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    # no active key left: the server must not fall back to open
    assert call(client, "post", "/v1/rerank", INFERENCE[0][2]).status_code == 401


def test_non_loopback_without_keys_requires_auth(make_client):
    c = make_client(host="0.0.0.0")
    assert call(c, "post", "/v1/rerank", INFERENCE[0][2]).status_code == 401
    c2 = make_client(host="0.0.0.0", allow_unauthenticated=True)
    assert call(c2, "post", "/v1/rerank", INFERENCE[0][2]).status_code == 200


def test_ledger_records_the_key(client, store):
    rec, key = store.create_key("carol")
    r = call(client, "post", "/v2/rerank", INFERENCE[1][2], key=key)
    row = store.get_usage(r.json()["id"])
    assert row.key_id == rec.id and row.dialect == "cohere_v2" and row.route == "/v2/rerank"


def test_key_is_never_logged(client, store, caplog):
    _, key = store.create_key("dave")
    with caplog.at_level("DEBUG"):
        call(client, "post", "/v1/rerank", INFERENCE[0][2], key=key)
        call(client, "post", "/v1/rerank", INFERENCE[0][2], key=key + "x")
    assert key not in caplog.text


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class Key:
    def __init__(self, id, rpm=None, dpm=None):
        self.id, self.requests_per_minute, self.documents_per_minute = id, rpm, dpm


def test_rate_limiter_token_buckets():
    from lastrank.errors import PayloadTooLargeError, RateLimitedError

    clock = FakeClock()
    lim = RateLimiter(clock=clock)
    k = Key("k1", rpm=3, dpm=100)
    for _ in range(3):
        lim.check(k, 10)
    with pytest.raises(RateLimitedError) as e:
        lim.check(k, 10)
    assert e.value.retry_after == pytest.approx(20.0)  # 1 request at 3/min
    clock.t += 20
    lim.check(k, 60)
    with pytest.raises(RateLimitedError) as e:
        lim.check(k, 10)  # the request bucket is empty again
    assert e.value.retry_after > 0
    with pytest.raises(PayloadTooLargeError):
        lim.check(k, 101)  # never fits: 413, not 429
    lim.check(None, 10**6)  # open server: no limits
    lim.check(Key("free"), 10**6)  # no limits on the key


def test_rate_limit_429_with_retry_after(client, store):
    _, key = store.create_key("limited", requests_per_minute=2)
    body = INFERENCE[0][2]
    assert call(client, "post", "/v1/rerank", body, key=key).status_code == 200
    assert call(client, "post", "/v1/rerank", body, key=key).status_code == 200
    r = call(client, "post", "/v1/rerank", body, key=key)
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    assert int(r.headers["retry-after"]) >= 1
    _, key2 = store.create_key("docs-limited", documents_per_minute=3)
    assert call(client, "post", "/v1/rerank", body, key=key2).status_code == 200  # 2 documents
    r = call(client, "post", "/v1/rerank", body, key=key2)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    r = call(client, "post", "/v1/rerank", {"query": Q, "documents": ["a"] * 4}, key=key2)
    assert r.status_code == 413


def test_overload_is_503_with_retry_after(client, fake_scheduler, store):
    fake_scheduler.overloaded = True
    r = client.post("/v1/rerank", json=INFERENCE[0][2])
    assert r.status_code == 503 and r.headers["retry-after"] == "3"
    assert r.json()["error"]["type"] == "overloaded_error"
    assert store.list_usage() == []


def test_not_ready_is_503(store):
    from fastapi.testclient import TestClient

    from lastrank.api.app import create_app
    from lastrank.api.settings import ServerSettings

    gate = threading.Event()

    def load():
        gate.wait(10)
        raise RuntimeError("no such checkpoint")

    app = create_app(ServerSettings(), store, load_backend=load)
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/health").status_code == 200
        r = c.get("/ready")
        assert r.status_code == 503 and "retry-after" in r.headers
        r = c.post("/v1/rerank", json=INFERENCE[0][2])
        assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready_error"
        gate.set()
        for _ in range(500):  # up to 10 s (a loaded machine); the loop ends as soon as the load has failed
            if app.state.lastrank.models.models[0].load_error:
                break
            time.sleep(0.02)
        r = c.get("/ready")
        assert r.status_code == 503 and "no such checkpoint" in r.json()["detail"]


def test_deadline_is_504(make_client, fake_scheduler):
    from lastrank.errors import DeadlineExceededError

    async def late(request):
        raise DeadlineExceededError("the request's deadline passed", retry_after=None)

    fake_scheduler.submit = late
    c = make_client(request_timeout_s=0.5)
    r = c.post("/v1/rerank", json=INFERENCE[0][2])
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error" and "retry-after" in r.headers


def test_model_error_is_500_with_body(make_client, fake_scheduler):
    from lastrank.errors import ModelError

    async def broken(request):
        raise ModelError("CUDA out of memory")

    fake_scheduler.submit = broken
    c = make_client()
    r = c.post("/v1/rerank", json=INFERENCE[0][2])
    assert r.status_code == 500 and r.json()["error"]["type"] == "model_error"


def test_client_disconnect_cancels_the_submit(store, fake_scheduler):
    """Through a real ASGI server: the handler notices the disconnect and cancels scheduler.submit."""
    import socket

    import httpx
    import uvicorn

    from lastrank.api.app import create_app
    from lastrank.api.settings import ServerSettings

    fake_scheduler.gate = None
    app = create_app(ServerSettings(), store, scheduler=fake_scheduler)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))

    def run():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        fake_scheduler.gate = asyncio.Event()  # never set: requests wait until cancelled
        loop.run_until_complete(server.serve(sockets=[sock]))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        for _ in range(1500):  # up to 30 s, as support.live_server waits for its servers
            if server.started:
                break
            time.sleep(0.02)
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"http://127.0.0.1:{port}/v1/rerank", json=INFERENCE[0][2], timeout=0.5)
        for _ in range(500):  # up to 10 s for the server to see the client gone
            if fake_scheduler.cancelled:
                break
            time.sleep(0.02)
        assert len(fake_scheduler.cancelled) == 1
        assert store.list_usage() == []
    finally:
        server.should_exit = True
        t.join(10)
