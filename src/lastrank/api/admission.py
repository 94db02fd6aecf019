"""Refusing rerank requests while every served model is full, from the request head alone.

Under overload most requests are refused, and a refusal that costs as much as a request's parse and
authentication steals the CPU (and the GIL) the admitted requests need (docs/benchmarks.md, "Overload").
`early_refusal(state, method, path, headers)` decides from what the head says, before the body is read:

- the route: a POST to a rerank route (/v1/rerank, /v2/rerank, /rerank);
- the models: every served model is ready and its scheduler would refuse a new request now
  (`Scheduler.admission_error`: a lock and two comparisons). The model a request names is in its body,
  which is not read here, so with several models a request is refused early only when all of them are
  full: whichever it names, it would be refused. (A request that names no model or an unknown one gets
  this 503 instead of its 400/404 while everything is full; it gets those once a queue has room.)
- the caller: a key verified within --key-cache-s (`Authenticator.cached`: one SHA-256, no SQLite, no
  thread), or anyone while the server runs open (no keys exist). Any other caller takes the ordinary
  path, which authenticates first, so a client without a valid key never learns even that the server
  is busy; and a refusal does no work, so no key is bypassed for any.

The answer is the 503 the scheduler itself would give (api/errors.py: the same JSON, Retry-After), with
an X-Request-Id. It is counted like every answer (the per-route metrics, the access log, and `lastrank
usage`'s ERRORS for the key: api/refusals.py) and never billed: nothing reaches the handler.

Two places answer it:
- `refuse_in_protocol(protocol)`: `lastrank serve`'s h11 protocol (app.http_protocol) answers as soon as
  h11 has parsed the head: no ASGI cycle, no task, no middleware, one write. The body that follows is
  skipped by uvicorn as for any response sent before its request's body. This is where it is cheap:
  the ASGI path spent about 3x the CPU per refusal (docs/benchmarks.md).
- RequestContextMiddleware (app.py): the same decision for servers that do not run that protocol (Ray
  Serve's replicas, TestClient).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from lastrank.api import errors as api_errors
from lastrank.api.logs import log_access
from lastrank.api.refusals import count_refusal
from lastrank.errors import OverloadedError
from lastrank.types import new_request_id

log = logging.getLogger("lastrank.api")

RERANK_ROUTES = frozenset({"/v1/rerank", "/v2/rerank", "/rerank"})
_RERANK_TARGETS = frozenset(route.encode() for route in RERANK_ROUTES)


@dataclass(frozen=True)
class Refusal:
    error: OverloadedError
    key: object | None  # the KeyRecord of the cached key; None when the server runs open


def early_refusal(state, method: str, path: str, headers) -> Refusal | None:
    """The refusal for this request head (module docstring), or None: take the ordinary path.
    Cheap and safe on the event loop; never raises for a request it cannot judge (it returns None)."""
    if state is None or method != "POST" or path not in RERANK_ROUTES:
        return None
    errors = []
    for model in state.models:
        if not model.ready or model.scheduler is None:
            return None
        error = model.scheduler.admission_error()  # None also where a runner cannot tell (a Ray replica's)
        if error is None:
            return None  # this model has room: the body says which model is asked for
        errors.append(error)
    auth = state.auth
    if auth.open_now():
        return Refusal(_one_error(errors), None)
    authorization = next((v.decode("latin-1") for k, v in headers if k == b"authorization"), None)
    key = auth.cached(authorization, refusing=True)  # not due for a revocation check: a refusal grants nothing
    if key is None:
        return None  # authentication comes first for a key not verified moments ago
    return Refusal(_one_error(errors), key)


def _one_error(errors: list[OverloadedError]) -> OverloadedError:
    if len(errors) == 1:
        return errors[0]
    hints = [e.retry_after for e in errors if e.retry_after is not None]
    return OverloadedError(f"every served model's queue is full ({len(errors)} models); retry shortly",
                           retry_after=min(hints) if hints else None)


def refuse_in_protocol(protocol, app) -> None:
    """Answer refusable requests in uvicorn's H11Protocol `protocol`, serving `app` (create_app's), before
    an ASGI cycle exists: its h11 connection's `next_event` is wrapped so that a refused request's
    `Request` event is answered here and never reaches uvicorn. Its body's `Data` and `EndOfMessage`
    events still do: uvicorn drops the body of a request whose response is complete and starts the next
    cycle at its end, as for an app that answered before reading the body."""
    import h11

    state = getattr(getattr(app, "state", None), "lastrank", None)
    if state is None:
        return  # not create_app's app: nothing to judge with
    conn = protocol.conn
    next_event = conn.next_event
    closed = False

    def next_event_refusing():
        nonlocal closed
        while True:
            if closed:
                return h11.NEED_DATA  # a refusal closed the connection: nothing more is read
            event = next_event()
            if type(event) is not h11.Request:
                return event
            target = event.target.partition(b"?")[0]
            if target not in _RERANK_TARGETS or event.method != b"POST":
                return event
            try:
                refusal = early_refusal(state, "POST", target.decode("ascii"), event.headers)
            except Exception:  # judging must never break a connection: the ordinary path decides
                log.exception("could not judge a request for an early refusal")
                refusal = None
            if refusal is None:
                return event
            closed = _answer(protocol, conn, state, app, event, target.decode("ascii"), refusal)

    conn.next_event = next_event_refusing


def _answer(protocol, conn, state, app, event, path: str, refusal: Refusal) -> bool:
    """Send the refusal, count it; -> whether the connection was closed."""
    import h11

    started = time.monotonic()
    request_id = new_request_id()
    response = api_errors.response_for(refusal.error, request_id)
    headers = list(protocol.server_state.default_headers) + response.raw_headers
    if conn.they_are_waiting_for_100_continue:
        # The client waits for "100 Continue" before its body; after a final answer it may send the body
        # or not, so the connection cannot be reused safely.
        headers.append((b"connection", b"close"))
    output = conn.send(h11.Response(status_code=response.status_code, headers=headers,
                                    reason=b"Service Unavailable"))
    output += conn.send(h11.Data(data=response.body))
    output += conn.send(h11.EndOfMessage())
    protocol.transport.write(output)  # one write: head and body in one segment
    closed = conn.our_state is h11.MUST_CLOSE  # the client said `Connection: close` (or HTTP/1.0), or see above
    if closed:
        conn.send(h11.ConnectionClosed())
        protocol.transport.close()
    protocol.on_response_complete()  # keep-alive and header timers, request count: as for any response

    key = refusal.key
    scope = {"type": "http", "method": "POST", "path": path, "headers": event.headers, "app": app,
             "state": {"request_id": request_id, "key_id": getattr(key, "id", None),
                       "key_name": getattr(key, "name", None)}}
    seconds = time.monotonic() - started
    try:
        state.metrics.observe_http(path, response.status_code, seconds)
    except Exception:  # counting must never affect an answer
        log.exception("could not count a refused request in the metrics")
    log_access(scope, response.status_code, seconds)  # --access-log json; never raises
    if protocol.access_log:  # --access-log text: uvicorn's own line, as it writes for every other answer
        client = "%s:%d" % protocol.client if protocol.client else ""
        protocol.access_logger.info('%s - "%s %s HTTP/%s" %d', client, "POST", event.target.decode("ascii", "replace"),
                                    event.http_version.decode("ascii", "replace"), response.status_code)
    count_refusal(scope, response.status_code)  # `lastrank usage`'s ERRORS; never raises
    return closed


__all__ = ["RERANK_ROUTES", "Refusal", "early_refusal", "refuse_in_protocol"]
