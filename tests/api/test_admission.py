"""Issue 21 item 14: while every model's queue is full, `lastrank serve`'s HTTP protocol answers a rerank
request's 503 from its head alone (api/admission.py): no ASGI cycle, no body read, no key verification,
and the refusal is still the documented JSON 503 + Retry-After, counted (metrics, `lastrank usage`),
never billed; the connection goes on serving."""

from __future__ import annotations

import json
import logging
import socket
import time

import httpx
import pytest

from lastrank.api.admission import early_refusal
from lastrank.api.settings import ServerSettings
from lastrank.errors import OverloadedError

from support.fake_scheduler import FakeScheduler
from support.live_server import LiveServer, read_until_closed

BODY = json.dumps({"query": "q words", "documents": ["q words here", "nothing"]}).encode()


class Saturable(FakeScheduler):
    """A fake scheduler whose queue is full while `full` is set, as Scheduler.admission_error says."""

    def __init__(self):
        super().__init__()
        self.full = False

    def admission_error(self):
        return OverloadedError("too many requests queued (4, max 4)", retry_after=2.5) if self.full else None

    async def submit(self, request):
        self.overloaded = self.full
        return await super().submit(request)


class Responses:
    """Reads the responses of one keep-alive connection, in order (several may come in one recv)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.data = b""

    def next(self, limit_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        deadline = time.monotonic() + limit_s
        while True:
            if b"\r\n\r\n" in self.data:
                head, _, rest = self.data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                length = int(headers.get("content-length", 0))
                if len(rest) >= length:
                    self.data = rest[length:]
                    return int(lines[0].split()[1]), headers, rest[:length]
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed mid-response: {self.data!r}")
            self.data += chunk


def post(key: str, body: bytes = BODY, *, length: int | None = None, extra: str = "") -> bytes:
    return (f"POST /v1/rerank HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n{extra}\r\n").encode() + body


@pytest.fixture
def saturable():
    return Saturable()


@pytest.fixture
def served(store, saturable):
    """(server, key, key record, the ASGI calls seen, the authentications made) with a verified key."""
    record, key = store.create_key("busy-client")
    srv = LiveServer(ServerSettings(body_timeout_s=30, header_timeout_s=30), store, scheduler=saturable)
    app = srv.app
    calls = []

    async def counting(scope, receive, send):  # every request that reaches the ASGI app
        if scope["type"] == "http":
            calls.append((scope["method"], scope["path"]))
        await stack(scope, receive, send)

    stack = app.build_middleware_stack()
    app.middleware_stack = counting
    auth = app.state.lastrank.auth
    # The key cache's clock stands still, so the key verified below stays "verified moments ago" for the whole
    # test: on the real clock a test that took over 0.5 s (the revocation check, REVOCATION_CHECK_S) or 5 s (the
    # cache's TTL) on a loaded machine saw a verification it does not expect, or no early refusal.
    frozen = auth.clock()
    auth.clock = lambda: frozen
    authenticated = []
    verify = auth.authenticate

    def counting_authenticate(*args, **kwargs):
        authenticated.append(1)
        return verify(*args, **kwargs)

    auth.authenticate = counting_authenticate
    with srv:
        r = httpx.post(srv.url + "/v1/rerank", content=BODY, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200  # the key is verified (and cached) once
        yield srv, key, record, calls, authenticated


def test_a_full_queue_is_answered_in_the_protocol_before_the_body_and_auth(served, saturable, store):
    srv, key, record, calls, authenticated = served
    before_calls, before_auth = len(calls), len(authenticated)
    saturable.full = True
    with srv.connect() as s:
        replies = Responses(s)
        s.sendall(post(key))  # a whole request
        first = replies.next()
        s.sendall(post(key) + post(key))  # two pipelined in one write
        pipelined = [replies.next(), replies.next()]
        s.sendall(post(key, b'{"query": "q", "docu', length=len(BODY)))  # its body arrives later, in parts
        early = replies.next()  # answered before the rest of the body came
        s.sendall(BODY[len(b'{"query": "q", "docu'):])
        saturable.full = False  # room again: the same connection is served, the skipped body did not confuse it
        s.sendall(post(key))
        served_after = replies.next()
    refusals = [first, *pipelined, early]
    for status, headers, body in refusals:
        assert status == 503
        assert headers["retry-after"] == "3" and headers["content-type"] == "application/json"
        assert len(headers["x-request-id"]) == 32
        error = json.loads(body)["error"]
        assert error == {"message": "too many requests queued (4, max 4)", "type": "overloaded_error", "code": 503}
    assert len({h["x-request-id"] for _, h, _ in refusals}) == 4
    assert served_after[0] == 200 and len(json.loads(served_after[2])["results"]) == 2
    # The refusals never reached the app (no ASGI cycle: no body read, no handler) nor the key store.
    assert calls[before_calls:] == [("POST", "/v1/rerank")]  # only the request served after
    assert len(authenticated) == before_auth  # the cached key: no verification for anything here
    # Counted: the per-route metrics and the key's ERRORS; billed: only the two 200s.
    metrics = httpx.get(srv.url + "/metrics").text
    assert 'lastrank_requests_total{route="/v1/rerank",status="503"} 4.0' in metrics
    store.flush_refusals()
    assert [(r["key_id"], r["route"], r["status"], r["count"]) for r in store.list_refusals()] == [
        (record.id, "/v1/rerank", 503, 4)]
    assert store.count_usage() == 2


def test_a_refusal_never_reads_a_body_that_does_not_come(served, saturable):
    srv, key, _, calls, _ = served
    saturable.full = True
    with srv.connect() as s:
        s.sendall(post(key, b"{", length=100_000))  # the ordinary path would wait for 100 kB
        status, headers, _ = Responses(s).next(limit_s=5)
    assert status == 503 and headers["retry-after"] == "3"


def test_connection_close_and_expect_continue_are_honoured(served, saturable):
    srv, key, _, _, _ = served
    saturable.full = True
    for extra in ("Connection: close\r\n", "Expect: 100-continue\r\n"):
        with srv.connect() as s:
            # with Expect the client waits for "100 Continue" before its body: the 503 comes instead, and
            # the connection closes (the client may or may not send the body now)
            s.sendall(post(key, b"" if "Expect" in extra else BODY, length=len(BODY), extra=extra))
            data, closed = read_until_closed(s, limit_s=5)
        assert closed and data.startswith(b"HTTP/1.1 503 "), (extra, data)
        assert b"connection: close" in data.lower() and b"overloaded_error" in data


def test_refusals_are_in_both_access_logs(served, saturable, caplog):
    srv, key, _, _, _ = served
    text_lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            text_lines.append(record.getMessage())

    uvicorn_access = logging.getLogger("uvicorn.access")  # --access-log text: uvicorn's own line
    keep, level = Keep(), uvicorn_access.level
    uvicorn_access.addHandler(keep)
    uvicorn_access.setLevel(logging.INFO)
    saturable.full = True
    try:
        with caplog.at_level(logging.INFO, logger="lastrank.access"):  # --access-log json
            r = httpx.post(srv.url + "/v1/rerank?x=1", content=BODY, headers={"Authorization": f"Bearer {key}"})

            # The server writes its answer first and logs right after, in its own thread: the client can hold
            # the 503 before both lines exist, so wait for them (bounded) before the handlers are removed.
            def json_lines():
                return [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "lastrank.access"]

            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not (
                    text_lines and any(x["request_id"] == r.headers.get("x-request-id") for x in json_lines())):
                time.sleep(0.01)
            lines = json_lines()
    finally:
        uvicorn_access.removeHandler(keep)
        uvicorn_access.setLevel(level)
    assert r.status_code == 503
    [line] = [x for x in lines if x["request_id"] == r.headers["x-request-id"]]
    assert (line["status"], line["path"], line["key"], line["method"]) == (503, "/v1/rerank", "busy-client", "POST")
    assert any(t.endswith('"POST /v1/rerank?x=1 HTTP/1.1" 503') for t in text_lines), text_lines
    assert key not in " ".join(text_lines) + json.dumps(lines)


def test_who_is_refused_early(served, saturable):
    srv, key, _, calls, authenticated = served
    saturable.full = True
    before_calls, before_auth = len(calls), len(authenticated)
    unknown = httpx.post(srv.url + "/v1/rerank", content=BODY, headers={"Authorization": "Bearer lr-000000000000-x"})
    missing = httpx.post(srv.url + "/v1/rerank", content=BODY)
    health = httpx.get(srv.url + "/health")
    models = httpx.post(srv.url + "/v1/models", content=b"", headers={"Authorization": f"Bearer {key}"})
    # a key not verified moments ago is authenticated first: a client without a valid key learns nothing
    assert (unknown.status_code, missing.status_code) == (401, 401)
    assert health.status_code == 200 and models.status_code == 405  # other routes: the app, as ever
    assert len(calls) == before_calls + 4 and len(authenticated) == before_auth + 2


class _Model:
    def __init__(self, error, ready=True):
        self.ready = ready
        self.scheduler = type("S", (), {"admission_error": staticmethod(lambda: error)})()


class _Auth:
    def __init__(self, open_now=False, key=None):
        self._open, self._key = open_now, key

    def open_now(self):
        return self._open

    def cached(self, authorization, *, refusing=False):
        assert refusing  # the early refusal may use a key whose revocation check is due (it grants nothing)
        return self._key if authorization == "Bearer k" else None


def _state(models, auth):
    return type("State", (), {"models": models, "auth": auth})()


def test_several_models_are_refused_early_only_when_all_are_full():
    full = OverloadedError("full", retry_after=4.0)
    fuller = OverloadedError("full", retry_after=2.0)
    key = object()
    headers = [(b"authorization", b"Bearer k")]
    state = _state([_Model(full), _Model(fuller)], _Auth(key=key))
    refusal = early_refusal(state, "POST", "/v2/rerank", headers)
    assert refusal.key is key and refusal.error.retry_after == 2.0  # the soonest any model may have room
    assert "every served model's queue is full" in refusal.error.message
    assert early_refusal(_state([_Model(full), _Model(None)], _Auth(key=key)), "POST", "/v2/rerank", headers) is None
    assert early_refusal(_state([_Model(full), _Model(full, ready=False)], _Auth(key=key)), "POST", "/rerank",
                         headers) is None
    assert early_refusal(state, "GET", "/v1/rerank", headers) is None
    assert early_refusal(state, "POST", "/v1/models", headers) is None
    assert early_refusal(state, "POST", "/v1/rerank", [(b"authorization", b"Bearer other")]) is None
    # a server running open (no keys): anybody may use it, so anybody may hear it is busy
    open_refusal = early_refusal(_state([_Model(full)], _Auth(open_now=True)), "POST", "/v1/rerank", [])
    assert open_refusal.key is None and open_refusal.error is full
