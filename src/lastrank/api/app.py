"""`create_app`: the FastAPI app, its middleware and its lifespan.

    create_app(settings, store, models=[ServedModel(...), ...])   several models (api/models.py), each with
                                                    a scheduler, a backend, or `load` (a callable run in a
                                                    thread at start-up, so /health answers while models load
                                                    and /ready says 503)
    create_app(settings, store, scheduler=...)      one model with a ready scheduler (tests: a fake one)
    create_app(settings, store, backend=...)        one model: the app builds and starts its Scheduler
    create_app(settings, store, load_backend=f)     one model loaded in the background: f() -> Backend
Each model has its own Scheduler (queue and worker thread), so a slow model never queues another's requests.

Middleware, outermost first:
  RequestContext   request id (X-Request-Id on every response), per-route metrics; an unexpected exception
                   becomes the JSON 500 (with `Connection: close`) here, so the server never has to drop
                   a keep-alive connection mid-cycle; while every model's queue is full, a rerank request
                   from a recently verified key gets its 503 here, before its body is read (api/admission.py;
                   under `lastrank serve` the protocol below answers it first)
  BodyLimit        counts the body bytes as they arrive (Content-Length is not trusted) and answers
                   413 past --max-body-bytes, 408 when the body takes longer than --body-timeout-s; the
                   body is buffered and replayed to the app

`http_protocol(settings)` is the HTTP/1.1 protocol `lastrank serve` hands uvicorn: its h11 protocol plus a
header timeout (--header-timeout-s: a connection that has not sent a complete request head that long
after opening, or after its last response, is closed) and a connection cap (--max-connections: a
connection past the cap gets a 503 and is closed at once), so stalled sockets cannot pile up. It also
answers the overload 503 of api/admission.py as soon as a request head is parsed, before any ASGI work.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from contextlib import asynccontextmanager
from typing import Any, Callable

from fastapi import FastAPI

from lastrank import __version__
from lastrank.api import admission
from lastrank.api import docs as api_docs
from lastrank.api import errors as api_errors
from lastrank.api.auth import Authenticator
from lastrank.api.handler import CLIENT_CLOSED_REQUEST, ServerState
from lastrank.api.limits import RateLimiter
from lastrank.api.logs import log_access
from lastrank.api.metrics import Metrics
from lastrank.api.models import ModelTable, ServedModel, served_model
from lastrank.api.refusals import count_refusal
from lastrank.api.catalogue import model_card, read_reports
from lastrank.api.catalogue import router as catalogue_router
from lastrank.api.playground import router as playground_router
from lastrank.api.routes import router
from lastrank.api.settings import ServerSettings
from lastrank.engine.chunking import ChunkingBackend
from lastrank.engine.scheduler import Scheduler
from lastrank.errors import InvalidRequestError, LastrankError, ModelNotAvailableError
from lastrank.families import known_names
from lastrank.store.credit import to_nano
from lastrank.types import new_request_id

log = logging.getLogger("lastrank.api")

KNOWN_ROUTES = {"/v1/rerank", "/v2/rerank", "/rerank", "/v1/models", "/health", "/ready", "/metrics", "/",
                "/docs", "/redoc", "/openapi.json", "/playground", "/models", "/v1/benchmarks"}


class RequestContextMiddleware:
    def __init__(self, app, metrics: Metrics, state: ServerState | None = None):
        self.app = app
        self.metrics = metrics
        self.state = state

    def _early_refusal(self, scope):
        """The 503 for a rerank request while every model's queue is full, before its body is read or
        parsed (api/admission.py decides; `lastrank serve` answers it earlier still, in http_protocol).
        Only for a key verified moments ago or an open server, so a refusal never skips authentication;
        anything else takes the ordinary path, where scheduler.submit refuses before tokenizing."""
        refusal = admission.early_refusal(self.state, scope.get("method"), scope.get("path"), scope.get("headers", ()))
        if refusal is None:
            return None
        scope["state"]["key_id"] = getattr(refusal.key, "id", None)  # who the refusal is counted for (api/refusals.py)
        scope["state"]["key_name"] = getattr(refusal.key, "name", None)  # for the access log
        return api_errors.response_for(refusal.error, scope["state"]["request_id"])

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.monotonic()
        status_holder = {"status": CLIENT_CLOSED_REQUEST}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            try:
                refusal = self._early_refusal(scope)
                if refusal is not None:
                    await refusal(scope, receive, send_wrapper)
                else:
                    await self.app(scope, receive, send_wrapper)
            except Exception:
                if status_holder["status"] != CLIENT_CLOSED_REQUEST:
                    raise  # the response had started: nothing to answer; uvicorn closes the connection
                response = api_errors.internal_error_response(request_id)
                await response(scope, receive, send_wrapper)
        except BaseException:
            if status_holder["status"] == CLIENT_CLOSED_REQUEST:
                status_holder["status"] = 500
            raise
        finally:
            path = scope.get("path", "")
            route = path if path in KNOWN_ROUTES else "other"
            seconds = time.monotonic() - started
            self.metrics.observe_http(route, status_holder["status"], seconds)
            log_access(scope, status_holder["status"], seconds)  # one JSON line (--access-log json); never raises
            count_refusal(scope, status_holder["status"])  # 4xx/5xx of rerank routes, for `lastrank usage`; never raises


class BodyLimitMiddleware:
    def __init__(self, app, max_body_bytes: int, body_timeout_s: float | None = None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.max_body_bytes
        request_id = scope.get("state", {}).get("request_id")

        async def too_large():
            message = f"the request body exceeds this server's limit of {limit} bytes"
            # Closed after the answer: the rest of the body is never read.
            response = api_errors.error_response(413, message, "payload_too_large", request_id=request_id, close=True)
            await response(scope, receive, send)

        async def too_slow():
            message = f"the request body was not received within {self.body_timeout_s:g} s"
            response = api_errors.error_response(408, message, "request_timeout", request_id=request_id)
            await response(scope, receive, send)

        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        return await too_large()  # early answer; the stream is still counted otherwise
                except ValueError:
                    pass
        chunks = []
        size = 0
        # One deadline for the whole body, so a client trickling a byte at a time cannot hold it forever.
        deadline = None if not self.body_timeout_s else time.monotonic() + self.body_timeout_s
        while True:
            if deadline is None:
                message = await receive()
            else:
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):  # no task per chunk
                        message = await receive()
                except TimeoutError:
                    return await too_slow()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body; nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: disconnect notifications

        await self.app(scope, replay, send)


def create_app(
    settings: ServerSettings | None = None,
    store: Any = None,
    *,
    models: list[ServedModel] | None = None,
    scheduler: Any = None,
    backend: Any = None,
    load_backend: Callable[[], Any] | None = None,
) -> FastAPI:
    settings = settings or ServerSettings()
    if models is None:
        models = [single_model(settings, scheduler=scheduler, backend=backend, load=load_backend)]
    table = ModelTable(models)
    prices = model_prices(settings, table)
    metrics = Metrics()
    metrics.attach_models(table)
    state = ServerState(
        settings=settings,
        store=store,
        auth=Authenticator(store, open_allowed=settings.loopback or settings.allow_unauthenticated,
                           cache_ttl_s=settings.key_cache_ttl_s),
        limiter=RateLimiter(default_requests_per_minute=settings.default_requests_per_minute,
                            default_documents_per_minute=settings.default_documents_per_minute,
                            store=store),  # used only if the store is shared (PostgreSQL): limits across replicas
        metrics=metrics,
        models=table,
        prices=prices,
    )

    async def start_model(model: ServedModel) -> None:
        if model.scheduler is None:
            if model.backend is None:
                model.backend = await asyncio.to_thread(model.load)
            model.scheduler = make_scheduler(model.backend, settings, observer=metrics.observer(model.name))
        await model.scheduler.start()
        model.capabilities = model.capabilities or model.scheduler.capabilities
        model.random_weights = model.random_weights or (model.backend is not None and model.backend.random_weights)
        if model.card is None and model.backend is not None:  # for /v1/models and /models: read once, here
            model.card = await asyncio.to_thread(model_card, model.backend.path)
        model.ready = True
        log.info("model ready: %s%s", model.name, " (RANDOM WEIGHTS: scores mean nothing)" if model.random_weights else "")

    async def start_in_background(model: ServedModel) -> None:
        try:
            await start_model(model)
        except ModelNotAvailableError as e:  # a refusal that is its own reason (e.g. dtype int8 for a family
            # without it): no traceback; the load error below is the one line the server exits with
            model.load_error = f"the model {model.name!r} failed to load: {e}"
        except Exception as e:  # the server stays up, /ready and /v1/models say why
            log.exception("loading the model %s failed", model.name)
            model.load_error = f"the model {model.name!r} failed to load: {e}"

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if store is not None and hasattr(store, "sweep_credit_holds"):
            try:  # credit held by requests a stopped server never finished goes back (store/credit.py)
                await asyncio.to_thread(store.sweep_credit_holds)
            except Exception:  # the store may be down at start; each key's next request sweeps its own holds
                log.warning("could not give back expired credit holds at start", exc_info=True)
        loaders = []
        for model in table:
            if model.load is None and model.scheduler is None and model.backend is None:
                model.load_error = f"no backend was given for the model {model.name!r}"  # create_app() bare: docs only
            elif model.load is not None and model.scheduler is None and model.backend is None:
                loaders.append(asyncio.create_task(start_in_background(model)))
            else:
                await start_model(model)
        try:
            yield
        finally:
            for model in table:
                model.ready = False
                model.stopping = True
            for loader in loaders:
                if not loader.done():
                    loader.cancel()
            for model in table:
                if model.scheduler is not None:
                    try:
                        await model.scheduler.stop()
                    except Exception:
                        log.exception("stopping the scheduler of %s failed", model.name)

    app = FastAPI(
        title="lastrank",
        version=__version__,
        description="A self-hosted rerank API: Jina, Cohere v1/v2 and TEI dialects over every served model.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from lastrank.api.docs, with local assets (no CDN)
        redoc_url=None,
    )
    app.state.lastrank = state
    app.state.reports = read_reports(settings.reports, table)  # serve --reports, for /models (api/catalogue.py)
    api_errors.install(app)
    app.include_router(router)
    app.include_router(playground_router)
    app.include_router(catalogue_router)
    api_docs.install(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes,
                       body_timeout_s=settings.body_timeout_s)
    if settings.cors_origins:  # opt-in: browser apps on these origins may call the API (keys still apply)
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-API-Key"],
                           expose_headers=["X-Request-Id", "X-Lastrank-Truncated-Documents",
                                           "X-Lastrank-Query-Truncated", "Retry-After"])
    app.add_middleware(RequestContextMiddleware, metrics=metrics, state=state)  # added last: outermost
    return app


def model_prices(settings: ServerSettings, table: ModelTable) -> dict[str, float]:
    """Prices by served model name: a model's own (ServedModel.price_per_1k_docs, e.g. set from a router config),
    then --price (an alias names its model); InvalidRequestError (a ValueError, one
    `lastrank: error:` line from `lastrank serve`) for a malformed or unknown name."""
    out = {m.name: m.price_per_1k_docs for m in table if m.price_per_1k_docs is not None}
    for name, usd in settings.model_prices().items():  # the command line wins over a model's own price
        try:
            out[table.resolve(name).name] = usd
        except LastrankError:
            raise InvalidRequestError(f"--price names the model {name!r}, which is not served here; this server "
                                      f"serves {table.served_names()}") from None
    # The ledger counts nano-dollars (store/credit.py): a price it cannot charge (more than 9 decimals, over 1e9) is
    # refused here, at start, rather than as a 400 blaming the client on every request to that model.
    to_nano(settings.price_per_1k_docs, "--price-per-1k-docs")
    for name, usd in out.items():
        to_nano(usd, f"the price of the model {name!r}")
    return out


def make_scheduler(backend, settings: ServerSettings, observer=None):
    """A served model's Scheduler: chunk mode for every family (a backend already wrapped, e.g. Reranker's,
    gets this server's cap) and the server's admission limits. Also what each Ray replica runs (api/ray.py)."""
    return Scheduler(ChunkingBackend(backend, max_chunks=settings.max_chunks), max_batch_tokens=settings.max_batch_tokens,
                     max_queued_tokens=settings.max_queued_tokens, max_queued_requests=settings.max_queued_requests,
                     observer=observer)


def single_model(settings: ServerSettings, *, scheduler: Any = None, backend: Any = None,
                 load: Callable[[], Any] | None = None) -> ServedModel:
    """The one served model of create_app(scheduler= | backend= | load_backend=), named from the settings:
    --served-model-name, else the family's public name, else the model id's last part."""
    if sum(x is not None for x in (scheduler, backend, load)) > 1:
        raise ValueError("pass at most one of scheduler=, backend=, load_backend= (or models=)")
    caps = scheduler.capabilities if scheduler is not None else backend.capabilities if backend is not None else None
    family_names = known_names(caps.family) if caps is not None else ()
    return served_model(settings, 0, family_names, scheduler=scheduler, backend=backend, load=load, capabilities=caps)


# Sent to a connection over --max-connections before closing it: no request was read, so no h11 state.
_OVER_CAPACITY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
                  b"retry-after: 1\r\nconnection: close\r\ncontent-length: 37\r\n\r\n"
                  b"too many open connections; retry soon")


def _no_delay(transport) -> None:
    # uvicorn writes a response's head and body separately. asyncio turns Nagle off only for sockets it
    # made itself with proto=IPPROTO_TCP, not for a socket handed in (sockets=[...], --fd, systemd): there
    # the body waited for the client's delayed ACK, 40 ms per response (measured on a test server).
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def http_protocol(settings: ServerSettings) -> type:
    """uvicorn's h11 protocol with the header timeout and the connection cap of `settings` (module docstring).

    Pass it as `uvicorn.Config(app, http=http_protocol(settings))`. A timeout or cap of None disables it."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    header_timeout_s = settings.header_timeout_s
    max_connections = settings.max_connections

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            over = max_connections is not None and len(self.connections) >= max_connections
            super().connection_made(transport)
            _no_delay(transport)
            admission.refuse_in_protocol(self, self.config.app)  # overload: 503s before any ASGI work
            if over:
                log.warning("connection refused: %d connections open (--max-connections)", len(self.connections) - 1)
                transport.write(_OVER_CAPACITY)
                transport.close()
                return
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()  # the next request's head must arrive in time too

        def connection_lost(self, exc) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            if not header_timeout_s:
                return
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout, self.cycle)

        def _header_timeout(self, cycle) -> None:
            # Close only if no request has started since the timer was armed (the cycle is the same
            # and finished): a request being served, or its body being read, is not this timer's business.
            self._header_timer = None
            if self.transport.is_closing() or self.cycle is not cycle:
                return
            if cycle is None or cycle.response_complete:
                self.transport.close()

    return GuardedH11Protocol


__all__ = ["create_app", "http_protocol"]
