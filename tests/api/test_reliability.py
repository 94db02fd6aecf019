"""Issue 9: one tenant's input never fails another's, no input yields a 500, stalled sockets are closed.

Every reproduction of the issue is here: nested marker strings in every field and route, NaN / Infinity /
1e999 anywhere in a body, the two-key isolation run through a real HTTP server, the 500 that must close
its connection cleanly (raw socket, pipelined), and header / body stalls and the connection cap (raw
sockets). The fuzz test of the same routes is tests/api/test_fuzz.py.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from lastrank.api.settings import ServerSettings

from support.live_server import LiveServer, read_response, read_until_closed

# The issue's nested marker strings: the official one-pass removal assembles a new marker from each.
NESTED = [
    "<|embed_<|embed_token|>token|>",
    "a<|rerank_<|embed_token|>token|>b",
    "<|<|embed_token|>embed_token|>",
    "<|rerank_<|rerank_token|>token|>",
    "<|<|rerank_token|>rerank_token|>",
]
CLEAN = {"query": "how long do fleas live", "documents": ["Fleas live about a year.", "Paris is in France.", "tea"]}


# ------------------------------------------------------------------------------------------------
# 1. Nested markers: a 200 in every field, on every route, with the real engine


@pytest.fixture(scope="module")
def engine_client(tiny_reranker, tmp_path_factory):
    from fastapi.testclient import TestClient

    from lastrank.api.app import create_app
    from lastrank.store import Store

    store = Store(tmp_path_factory.mktemp("rel") / "ledger.db")
    app = create_app(ServerSettings(model=("/ckpt/tiny",)), store, backend=tiny_reranker.backend)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
    store.close()


@pytest.mark.parametrize("text", NESTED)
def test_nested_markers_in_documents_query_and_instruction_are_ranked(engine_client, text):
    docs = [text, "x", f"tea {text} leaves"]
    bodies = [
        ("/v1/rerank", {"query": "q", "documents": docs}),
        ("/v1/rerank", {"query": text, "documents": ["x", "y"]}),
        ("/v1/rerank", {"query": "q", "documents": ["x", "y"], "instruction": text}),
        ("/v1/rerank", {"query": "q", "documents": [{"text": text, "title": text}], "rank_fields": ["text", "title"]}),
        ("/v2/rerank", {"model": "jina-reranker-v3", "query": text, "documents": docs}),
        ("/rerank", {"query": text, "texts": docs}),
    ]
    for route, body in bodies:
        r = engine_client.post(route, json=body)
        assert r.status_code == 200, (route, body, r.status_code, r.text[:300])
        results = r.json() if route == "/rerank" else r.json()["results"]
        assert sorted(x["index"] for x in results) == list(range(len(body.get("documents") or body["texts"])))


# ------------------------------------------------------------------------------------------------
# 2. NaN / Infinity / -Infinity / 1e999 anywhere: 400 "not valid JSON" before any work, on every route

NON_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"]


def non_finite_bodies(tok: bytes) -> list[tuple[str, bytes]]:
    return [
        ("/v1/rerank", b'{"query":"q","documents":[{"text":"a","meta":' + tok + b'}]}'),
        ("/v1/rerank", b'{"query":"q","documents":[{"text":"a","n":' + tok + b'}],"rank_fields":["n"]}'),
        ("/v2/rerank", b'{"query":"q","documents":[{"text":"a","meta":' + tok + b'}],"return_documents":true}'),
        ("/v2/rerank", b'{"query":"q","documents":["a"],"top_n":' + tok + b'}'),
        ("/rerank", b'{"query":"q","texts":["a"],"extra":[1,2,' + tok + b']}'),
        ("/rerank", b'{"query":"q","documents":["a"],"score_threshold":' + tok + b'}'),
    ]


@pytest.mark.parametrize("tok", NON_FINITE, ids=[t.decode() for t in NON_FINITE])
def test_non_finite_numbers_anywhere_are_400_before_any_work(client, fake_scheduler, store, tok):
    for route, raw in non_finite_bodies(tok):
        r = client.post(route, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, (route, raw, r.status_code, r.text[:300])
        assert "not valid JSON" in r.json()["detail"] and r.json()["error"]["type"] == "invalid_request_error"
    assert fake_scheduler.requests == []  # refused before the model was asked anything
    # nothing billed: every request of the day is an unbilled error
    assert all(r["requests"] == r["errors"] and r["cost_usd"] == 0 for r in store.usage_summary())


def test_finite_numbers_in_echoed_documents_still_work(client):
    r = client.post("/v2/rerank", json={"query": "q", "documents": [{"text": "a", "meta": 1e300, "n": -0.0}],
                                        "return_documents": True})
    assert r.status_code == 200 and r.json()["results"][0]["document"]["meta"] == 1e300


# ------------------------------------------------------------------------------------------------
# 3. Two keys, one hostile: the other key's requests never fail (through a real HTTP server)


class RecordingBackend:
    """The real backend, recording which requests share each run_blocks call; `delay_s` before each call
    lets concurrent requests pile up. The first call waits at `release` once it has set `first_call` (two_key_run
    uses the pair to hold the model while the other requests queue; set `release` yourself to run freely)."""

    def __init__(self, backend, delay_s: float = 0.02):
        self._backend = backend
        self.delay_s = delay_s
        self.calls: list[set[str]] = []
        self._lock = threading.Lock()
        self.first_call, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def run_blocks(self, blocks):
        with self._lock:
            self.calls.append({b.request_id for b in blocks})
            first = len(self.calls) == 1
        if first:
            self.first_call.set()
            assert self.release.wait(30), "the test never released the first batch"
        time.sleep(self.delay_s)
        return self._backend.run_blocks(blocks)


def two_key_run(srv: LiveServer, backend: RecordingBackend, key_a: str, key_b: str, hostile_docs: list[str],
                rounds: int = 12):
    """Key A sends hostile documents while key B sends clean requests, 3 threads each, concurrently.
    -> ({request id: status} for A, same for B).

    The two keys certainly share a batch: one B client starts alone and its first batch is held in the model
    until the five other clients' first requests have their blocks queued (2 B, 3 A); the next batch then takes a
    block of each (round-robin, far under the token budget). Left to chance, they shared none in about 1 run of 15
    here."""

    def send(key: str, docs: list[str], n: int) -> list[tuple[str, int]]:
        out = []
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            for i in range(n):
                r = c.post("/v1/rerank", json={"query": f"fleas {i}", "documents": docs})
                out.append((r.headers["x-request-id"], r.status_code))
        return out

    scheduler = srv.app.state.lastrank.models.models[0].scheduler
    with ThreadPoolExecutor(6) as pool:
        try:
            b = [pool.submit(send, key_b, CLEAN["documents"] * 3, rounds)]
            assert backend.first_call.wait(30), "the first request never reached the model"
            b += [pool.submit(send, key_b, CLEAN["documents"] * 3, rounds) for _ in range(2)]
            a = [pool.submit(send, key_a, hostile_docs, rounds) for _ in range(3)]
            # the five behind the held one planned and queued: their blocks are what the next batch takes (the
            # scheduler's own queue; queued_requests counts a request while it is still being tokenized, so it says
            # 6 before the blocks are there, and then the next batches took them one by one: seen once here)
            deadline = time.monotonic() + 30
            while len(scheduler._ready) < 5:
                assert time.monotonic() < deadline, f"{len(scheduler._ready)} of 5 requests' blocks queued"
                time.sleep(0.01)
        finally:
            backend.release.set()
        return (dict(x for f in a for x in f.result()), dict(x for f in b for x in f.result()))


def mixed_batches(calls: list[set[str]], a_ids, b_ids) -> int:
    return sum(1 for ids in calls if ids & set(a_ids) and ids & set(b_ids))


@pytest.fixture
def two_keys(store):
    _, key_a = store.create_key("tenant-a")
    _, key_b = store.create_key("tenant-b")
    return key_a, key_b


def test_hostile_documents_from_one_key_do_not_fail_another_key(tiny_reranker, store, two_keys):
    """The issue's attack as it is now: the nested-marker documents rank (200) and key B never fails."""
    backend = RecordingBackend(tiny_reranker.backend)
    with LiveServer(ServerSettings(), store, backend=backend) as srv:
        a, b = two_key_run(srv, backend, *two_keys, hostile_docs=NESTED + ["x"])
    assert set(b.values()) == {200}, b
    assert set(a.values()) == {200}, a
    assert mixed_batches(backend.calls, a, b) > 0  # the keys really shared batches


def test_a_failing_block_fails_only_its_own_request(tiny_reranker, store, two_keys, monkeypatch):
    """The issue's defect 2 itself: with sanitising regressed to the official one pass and the prompt's own
    marker check off, the nested documents reach the model and make it fail (3 markers for 2 documents).
    Only key A's requests may fail, with a clean error; key B gets zero failures."""
    import lastrank.families.jina_v3.prompt as prompt_mod

    monkeypatch.setattr(prompt_mod, "sanitize", lambda t: t.replace("<|rerank_token|>", "").replace("<|embed_token|>", ""))
    monkeypatch.setattr(prompt_mod, "_check_markers", lambda prompt, n: None)
    backend = RecordingBackend(tiny_reranker.backend)
    with LiveServer(ServerSettings(), store, backend=backend) as srv:
        a, b = two_key_run(srv, backend, *two_keys, hostile_docs=["<|embed_<|embed_token|>token|>", "x"])
        assert httpx.get(srv.url + "/ready").status_code == 200  # the worker survived
    assert set(b.values()) == {200}, b
    assert set(a.values()) == {500}, a  # a model failure: this request's own, not a client error
    assert mixed_batches(backend.calls, a, b) > 0  # so B's requests were rerun alone after shared failures


def test_the_defensive_marker_check_is_the_requests_own_400(engine_client, monkeypatch):
    import lastrank.families.jina_v3.prompt as prompt_mod

    monkeypatch.setattr(prompt_mod, "sanitize", lambda t: t.replace("<|rerank_token|>", "").replace("<|embed_token|>", ""))
    r = engine_client.post("/v1/rerank", json={"query": "q", "documents": ["<|embed_<|embed_token|>token|>", "x"]})
    assert r.status_code == 400 and "document markers" in r.json()["detail"], r.text


# ------------------------------------------------------------------------------------------------
# 4. An unexpected exception: a JSON 500 with Connection: close, and the connection closed cleanly


def raw_post(path: str, body: dict, extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            f"{extra}\r\n").encode() + data


def test_a_500_closes_the_connection_cleanly_and_no_pipelined_request_hangs(store, fake_scheduler):
    real_submit = fake_scheduler.submit

    async def submit(request):
        if request.query == "boom":
            raise RuntimeError("a bug nobody anticipated")
        return await real_submit(request)

    fake_scheduler.submit = submit
    with LiveServer(ServerSettings(), store, scheduler=fake_scheduler) as srv:
        with srv.connect() as s:
            # two requests in one write: the first hits the bug, the second is pipelined behind it
            s.sendall(raw_post("/v1/rerank", {"query": "boom", "documents": ["a"]})
                      + b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            data, closed = read_until_closed(s)
        assert closed, f"the connection hung after the 500: {data!r}"
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 500 ")
        assert b"connection: close" in head.lower()
        body = json.loads(rest[: int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                          if line.lower().startswith(b"content-length")))])
        assert body["error"]["type"] == "internal_error" and "this is a bug" in body["detail"]
        assert b"HTTP/1.1" not in rest  # the pipelined request was not answered on a closing connection
        # the server itself is fine
        assert httpx.post(srv.url + "/v1/rerank", json=CLEAN).status_code == 200


def test_a_model_error_500_also_closes_cleanly(store, fake_scheduler):
    from lastrank.errors import ModelError

    async def broken(request):
        raise ModelError("CUDA out of memory")

    fake_scheduler.submit = broken
    with LiveServer(ServerSettings(), store, scheduler=fake_scheduler) as srv, srv.connect() as s:
        s.sendall(raw_post("/v1/rerank", CLEAN) + raw_post("/v1/rerank", CLEAN))
        data, closed = read_until_closed(s)
    assert closed and data.startswith(b"HTTP/1.1 500 ") and b"connection: close" in data.lower()
    assert data.count(b"HTTP/1.1 ") == 1


# ------------------------------------------------------------------------------------------------
# 5. Stalled connections: header and body timeouts, the connection cap (raw sockets)


def test_a_connection_that_sends_nothing_or_a_partial_head_is_closed(store, fake_scheduler):
    with LiveServer(ServerSettings(header_timeout_s=0.5), store, scheduler=fake_scheduler) as srv:
        silent = srv.connect()
        partial = srv.connect()
        partial.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: t\r\n")
        trickle = srv.connect()
        # A byte every 50 ms of a head that never ends, until the server closes the connection: no byte resets the
        # timer, so it closes while bytes still arrive (a timer reset by each byte never would). Ended by the close,
        # not by a clock: the bound is a hang guard only.
        started = time.monotonic()
        for ch in itertools.chain(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Pad: ", itertools.repeat(ord("a"))):
            try:
                trickle.sendall(bytes([ch]))
            except (BrokenPipeError, ConnectionResetError):
                break  # closed by the server mid-trickle, as it should be
            assert time.monotonic() - started < 30, "a connection trickling its head was never closed"
            time.sleep(0.05)
        for s in (silent, partial, trickle):
            data, closed = read_until_closed(s, limit_s=5)
            assert closed and data == b"", data
            s.close()
        # a prompt client on a fresh connection is unaffected, and keep-alive still works for it: a second request
        # once the first is answered (read, not a fixed pause that a slow machine might stretch past the timer)
        with srv.connect() as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            head, _ = read_response(s)
            assert head.startswith(b"HTTP/1.1 200 OK"), head
            s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            data, closed = read_until_closed(s, limit_s=5)
            assert data.count(b"HTTP/1.1 200 OK") == 1 and closed  # closed by the timer once idle


def test_a_slow_request_is_not_cut_by_the_header_timeout(store, fake_scheduler):
    import asyncio

    with LiveServer(ServerSettings(header_timeout_s=0.3), store, scheduler=fake_scheduler) as srv:
        fake_scheduler.gate = asyncio.Event()
        srv.loop.call_later(1.0, fake_scheduler.gate.set)  # the request takes about a second
        r = httpx.post(srv.url + "/v1/rerank", json=CLEAN, timeout=10)
        assert r.status_code == 200


def test_a_stalled_body_gets_408_and_the_connection_closes(store, fake_scheduler):
    with LiveServer(ServerSettings(body_timeout_s=0.5), store, scheduler=fake_scheduler) as srv, srv.connect() as s:
        s.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
                  b"\r\n{\"query\": ")
        data, closed = read_until_closed(s, limit_s=5)
    assert closed and data.startswith(b"HTTP/1.1 408 "), data
    assert b"connection: close" in data.lower() and b"not received within 0.5 s" in data
    assert fake_scheduler.requests == []


def until(condition, what: str, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {limit_s} s: {what}"
        time.sleep(0.01)


def test_connections_past_the_cap_are_refused_with_503(store, fake_scheduler):
    with LiveServer(ServerSettings(max_connections=3, header_timeout_s=30), store, scheduler=fake_scheduler) as srv:
        open_now = srv.server.server_state.connections  # what the cap counts
        held = [srv.connect() for _ in range(3)]
        until(lambda: len(open_now) == 3, "the server has the 3 connections")
        with srv.connect() as s:
            data, closed = read_until_closed(s, limit_s=5)
        assert closed and data.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in data.lower(), data
        held.pop().close()
        # the server sees the close when its loop gets to it (a fixed 0.2 s pause was a race on a loaded machine)
        until(lambda: len(open_now) == 2, "the server has seen one connection closed")
        assert httpx.get(srv.url + "/health").status_code == 200  # a slot is free again
        for s in held:
            s.close()


# ------------------------------------------------------------------------------------------------
# 6. Auth: what was received and what is expected (issue 13 item 7); the verification cache


def test_auth_errors_say_what_was_received_without_echoing_the_key(make_client, store):
    _, key = store.create_key("me")
    c = make_client()
    cases = [
        ({"Authorization": key}, "without the 'Bearer ' scheme"),
        ({"X-API-Key": key}, "does not read the x-api-key header"),
        ({"Api-Key": key}, "does not read the api-key header"),
        ({"Authorization": f"Basic {key}"}, "uses the 'Basic' scheme"),
        ({"Authorization": "Bearer "}, "says 'Bearer' but holds no key"),
        ({"Authorization": f"{key} extra"}, "without the 'Bearer ' scheme"),
        ({}, "missing API key"),
    ]
    for headers, expected in cases:
        r = c.post("/v1/rerank", json=CLEAN, headers=headers)
        assert r.status_code == 401, headers
        detail = r.json()["detail"]
        assert expected in detail and "Authorization: Bearer <key>" in detail, (headers, detail)
        assert key not in r.text and key.split("-")[-1] not in r.text
    assert c.post("/v1/rerank", json=CLEAN, headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_a_revoked_key_stops_at_the_next_request_in_this_process(make_client, store):
    rec, key = store.create_key("soon-revoked")
    c = make_client()  # the default 5 s key cache
    auth = {"Authorization": f"Bearer {key}"}
    assert c.post("/v1/rerank", json=CLEAN, headers=auth).status_code == 200
    assert c.post("/v1/rerank", json=CLEAN, headers=auth).status_code == 200  # from the cache
    store.revoke_key(rec.id)
    r = c.post("/v1/rerank", json=CLEAN, headers=auth)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"


def test_the_key_cache_against_a_clock(tmp_path):
    """The cache's two clocks, driven by hand: a verified key is reused for cache_ttl_s; a revocation by
    another process (here another Store object on the same file) empties it within revocation_check_s."""
    from lastrank.api.auth import Authenticator
    from lastrank.errors import PermissionDeniedError
    from lastrank.store import Store

    now = [1000.0]
    here, elsewhere = Store(tmp_path / "keys.db"), Store(tmp_path / "keys.db")
    try:
        rec, key = here.create_key("k")
        header = f"Bearer {key}"
        auth = Authenticator(here, open_allowed=False, cache_ttl_s=5.0, revocation_check_s=0.5, clock=lambda: now[0])
        assert auth.cached(header) is None
        assert auth.authenticate(header).id == rec.id
        assert auth.cached(header).id == rec.id
        now[0] += 0.4
        assert auth.cached(header) is not None  # checked against the revocations 0.4 s ago: trusted
        now[0] += 0.2
        assert auth.cached(header) is None  # 0.6 s: the worker thread reads the revocation count first
        assert auth.authenticate(header).id == rec.id  # unchanged: served from the cache, no verification
        now[0] += 5.0
        assert auth.cached(header) is None and auth.authenticate(header).id == rec.id  # past the TTL: verified again

        elsewhere.revoke_key(rec.id)
        assert auth.cached(header) is not None  # another process's revocation: not seen within the check interval
        now[0] += 0.5
        assert auth.cached(header) is None
        # the overload refusal before the body (api/admission.py) grants nothing: it need not wait for the check
        assert auth.cached(header, refusing=True).id == rec.id
        with pytest.raises(PermissionDeniedError):
            auth.authenticate(header)
    finally:
        here.close()
        elsewhere.close()


def test_the_cache_never_accepts_a_wrong_key(make_client, store):
    _, key = store.create_key("me")
    c = make_client()
    assert c.post("/v1/rerank", json=CLEAN, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert c.post("/v1/rerank", json=CLEAN, headers={"Authorization": f"Bearer {key}x"}).status_code == 401
    assert c.post("/v1/rerank", json=CLEAN, headers={"Authorization": f"Bearer {key[:-1]}"}).status_code == 401


# ------------------------------------------------------------------------------------------------
# 7. Overload: a full queue refuses with 503 + Retry-After without tokenizing (the scheduler test proves
# no plan() runs; here: the refusal reaches the client as the documented 503)


def test_a_full_queue_is_a_503_with_retry_after(tiny_reranker, store):
    class Held(RecordingBackend):
        def __init__(self, backend):
            super().__init__(backend, delay_s=0)
            self.gate = threading.Event()
            self.planned = 0

        def plan(self, request):
            self.planned += 1
            return self._backend.plan(request)

        def run_blocks(self, blocks):
            assert self.gate.wait(30)
            return self._backend.run_blocks(blocks)

    backend = Held(tiny_reranker.backend)
    with LiveServer(ServerSettings(max_queued_requests=1), store, backend=backend) as srv:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, srv.url + "/v1/rerank", json=CLEAN, timeout=30)
            deadline = time.monotonic() + 10
            while backend.planned < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.1)
            refused = [httpx.post(srv.url + "/v1/rerank", json=CLEAN, timeout=10) for _ in range(3)]
            backend.gate.set()
            assert first.result().status_code == 200
        assert [r.status_code for r in refused] == [503] * 3
        assert all(r.headers["retry-after"].isdigit() for r in refused)
        assert backend.planned == 1  # none of the refused requests was tokenized


def test_a_full_queue_refuses_a_verified_key_before_reading_the_body(tiny_reranker, store):
    """While the queue is full, a request from a recently verified key gets its 503 before its body is read:
    here the body never comes, and the 503 arrives anyway (the ordinary path would wait for the body)."""
    _, key = store.create_key("busy")
    gate = threading.Event()

    class Held(RecordingBackend):
        def run_blocks(self, blocks):
            assert gate.wait(30)
            return self._backend.run_blocks(blocks)

    settings = ServerSettings(max_queued_requests=1, body_timeout_s=30)
    with LiveServer(settings, store, backend=Held(tiny_reranker.backend, delay_s=0)) as srv:
        # the key cache's clock stands still: the key the first request verifies stays "recently verified" (5 s on
        # the real clock) however long a loaded machine takes to get to the early refusal
        frozen = srv.app.state.lastrank.auth.clock()
        srv.app.state.lastrank.auth.clock = lambda: frozen
        auth = {"Authorization": f"Bearer {key}"}
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, srv.url + "/v1/rerank", json=CLEAN, headers=auth, timeout=30)
            deadline = time.monotonic() + 10
            while srv.app.state.lastrank.models.models[0].scheduler.admission_error() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            with srv.connect() as s:
                s.sendall(f"POST /v1/rerank HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{".encode())
                head, body = read_response(s, limit_s=5)
            # an unknown key is not refused early: authentication comes first, so it gets its 401
            unknown = httpx.post(srv.url + "/v1/rerank", json=CLEAN, headers={"Authorization": "Bearer lr-000000000000-x"})
            full = srv.app.state.lastrank.models.models[0].scheduler.admission_error() is not None
            gate.set()
            assert first.result().status_code == 200
        assert head.startswith(b"HTTP/1.1 503 "), head
        assert b"retry-after: " in head.lower() and b"too many requests queued" in body
        assert full and unknown.status_code == 401
