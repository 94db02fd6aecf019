"""`create_app`: the FastAPI app, its middleware and its lifespan.

    create_app(settings, store, scheduler=...)      a ready scheduler (tests: a fake one)
    create_app(settings, store, engine=...)         an engine: the app builds and starts a Scheduler
    create_app(settings, store, load_engine=f)      f() -> engine, run in a thread at startup, so /health
                                                    answers while the model loads and /ready says 503

Middleware, outermost first:
  RequestContext   request id (X-Request-Id on every response), per-route metrics
  BodyLimit        counts the body bytes as they arrive (Content-Length is not trusted) and answers
                   413 past --max-body-bytes; the body is buffered and replayed to the app
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, Callable

from fastapi import FastAPI

from lastrank import __version__
from lastrank.api import docs as api_docs
from lastrank.api import errors as api_errors
from lastrank.api.auth import Authenticator
from lastrank.api.handler import CLIENT_CLOSED_REQUEST, ServerState
from lastrank.api.limits import RateLimiter
from lastrank.api.metrics import Metrics
from lastrank.api.refusals import count_refusal
from lastrank.api.playground import router as playground_router
from lastrank.api.routes import router
from lastrank.api.settings import ServerSettings
from lastrank.types import new_request_id

log = logging.getLogger("lastrank.api")

KNOWN_ROUTES = {"/v1/rerank", "/v2/rerank", "/rerank", "/v1/models", "/health", "/ready", "/metrics", "/",
                "/docs", "/redoc", "/openapi.json"}


class RequestContextMiddleware:
    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

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
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            if status_holder["status"] == CLIENT_CLOSED_REQUEST:
                status_holder["status"] = 500
            raise
        finally:
            path = scope.get("path", "")
            route = path if path in KNOWN_ROUTES else "other"
            self.metrics.observe_http(route, status_holder["status"], time.monotonic() - started)
            count_refusal(scope, status_holder["status"])  # 4xx/5xx of rerank routes, for `lastrank usage`; never raises


class BodyLimitMiddleware:
    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.max_body_bytes
        request_id = scope.get("state", {}).get("request_id")

        async def too_large():
            message = f"the request body exceeds this server's limit of {limit} bytes"
            response = api_errors.error_response(413, message, "payload_too_large", request_id=request_id)
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
        while True:
            message = await receive()
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
    scheduler: Any = None,
    engine: Any = None,
    load_engine: Callable[[], Any] | None = None,
) -> FastAPI:
    settings = settings or ServerSettings()
    metrics = Metrics()
    state = ServerState(
        settings=settings,
        store=store,
        auth=Authenticator(store, open_allowed=settings.loopback or settings.allow_unauthenticated),
        limiter=RateLimiter(default_requests_per_minute=settings.default_requests_per_minute,
                            default_documents_per_minute=settings.default_documents_per_minute,
                            store=store),  # used only if the store is shared (PostgreSQL): limits across replicas
        metrics=metrics,
    )

    def make_scheduler(eng):
        from lastrank.engine.scheduler import Scheduler

        return Scheduler(eng, max_batch_tokens=settings.max_batch_tokens, max_queued_tokens=settings.max_queued_tokens,
                         max_queued_requests=settings.max_queued_requests, observer=metrics)

    async def start_scheduler(sched) -> None:
        start = getattr(sched, "start", None)
        if start is not None:
            await start()
        state.scheduler = sched
        metrics.attach_scheduler(sched)
        state.ready = True
        metrics.ready.set(1)

    async def load_in_background() -> None:
        try:
            eng = await asyncio.to_thread(load_engine)
            await start_scheduler(make_scheduler(eng))
            log.info("model ready: %s", settings.served_model_name)
        except Exception as e:  # the server stays up, /ready says why
            log.exception("loading the model failed")
            state.load_error = f"the model failed to load: {e}"

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = None
        if scheduler is not None:
            await start_scheduler(scheduler)
        elif engine is not None:
            await start_scheduler(make_scheduler(engine))
        elif load_engine is not None:
            loader = asyncio.create_task(load_in_background())
        try:
            yield
        finally:
            state.ready = False
            if loader is not None and not loader.done():
                loader.cancel()
            sched = state.scheduler
            stop = getattr(sched, "stop", None)
            if stop is not None:
                try:
                    await stop()
                except Exception:
                    log.exception("stopping the scheduler failed")

    app = FastAPI(
        title="lastrank",
        version=__version__,
        description="Rerank API for Jina Reranker V3: Jina, Cohere v1/v2 and TEI dialects.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from lastrank.api.docs, with local assets (no CDN)
        redoc_url=None,
    )
    app.state.lastrank = state
    api_errors.install(app)
    app.include_router(router)
    app.include_router(playground_router)
    api_docs.install(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)  # added last: outermost
    return app


__all__ = ["create_app"]
