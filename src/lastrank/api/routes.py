"""Routes: a few lines each. Rerank routes hand the request to `handle_rerank` with their dialect."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from lastrank.api.dialects import cohere, jina, tei
from lastrank.api.errors import NotReadyError, response_for
from lastrank.api.handler import handle_rerank
from lastrank.api.metrics import CONTENT_TYPE_LATEST
from lastrank.errors import StoreUnavailableError

router = APIRouter()


def _body_schema(*models) -> dict:
    schemas = [m.model_json_schema(ref_template="#/components/schemas/{model}") for m in models]
    schema = schemas[0] if len(schemas) == 1 else {"oneOf": schemas}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@router.post("/v1/rerank", tags=["rerank"], openapi_extra=_body_schema(jina.Request),
             summary="Rerank (Jina; Cohere v1 fields accepted)")
async def rerank_v1(request: Request) -> Response:
    return await handle_rerank(request, "/v1/rerank", jina)


@router.post("/v2/rerank", tags=["rerank"], openapi_extra=_body_schema(cohere.Request), summary="Rerank (Cohere v2)")
async def rerank_v2(request: Request) -> Response:
    return await handle_rerank(request, "/v2/rerank", cohere)


@router.post("/rerank", tags=["rerank"], openapi_extra=_body_schema(tei.Request, jina.Request),
             summary="Rerank (TEI when the body has `texts`, Jina otherwise)")
async def rerank_any(request: Request) -> Response:
    return await handle_rerank(request, "/rerank", None)


@router.get("/v1/models", tags=["info"])
async def models(request: Request) -> dict:
    """Every served model with what it is: family, score definition, context length, embedding size."""
    state = request.app.state.lastrank
    # Listing the models is an inference-adjacent route: it needs a key like the rerank routes.
    await run_in_threadpool(state.auth.authenticate, request.headers.get("authorization"))
    data = []
    for m in state.models:
        entry = m.describe()
        entry["created"] = int(state.started_at)
        entry["aliases"] = [n for n in state.models.names_of(m) if n != m.name]
        # what a request is billed, USD per 1,000 documents (--price, else --price-per-1k-docs; docs/billing.md)
        entry["price_per_1k_docs"] = state.prices.get(m.name, state.settings.price_per_1k_docs)
        data.append(entry)
    return {"object": "list", "data": data}


@router.get("/health", tags=["info"])
async def health() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready", tags=["info"])
async def ready(request: Request) -> Response:
    """Readiness: the model is loaded and warmed up, the scheduler running, and the store (keys, ledger)
    answers: a server that can neither authenticate nor bill should get no traffic."""
    state = request.app.state.lastrank
    models = {m.name: ("ready" if m.ready else "failed" if m.load_error else "stopping" if m.stopping else "loading")
              for m in state.models}
    if state.ready:
        check_store = getattr(state.store, "check_available", None)
        if check_store is not None:
            try:  # cheap: one `SELECT 1`, or nothing at all while the store is known to be down (store/postgres.py)
                await run_in_threadpool(check_store)
            except StoreUnavailableError as e:
                return response_for(e, getattr(request.state, "request_id", None))
        return JSONResponse({"status": "ready", "models": models})
    waiting = [m for m in state.models if not m.ready]
    message = "; ".join(m.load_error or (f"the server is shutting down (model {m.name!r})" if m.stopping
                                         else f"the model {m.name!r} is loading") for m in waiting)
    return response_for(NotReadyError(message, retry_after=2.0), getattr(request.state, "request_id", None))


@router.get("/metrics", tags=["info"])
async def metrics(request: Request) -> Response:
    return Response(request.app.state.lastrank.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def root(request: Request) -> dict:
    state = request.app.state.lastrank
    return {"name": "lastrank", "models": [m.name for m in state.models], "docs": "/docs", "playground": "/playground",
            "catalogue": "/models",
            "routes": ["/v1/rerank", "/v2/rerank", "/rerank", "/v1/models", "/v1/benchmarks", "/health", "/ready",
                       "/metrics"],
            "time": time.time()}
