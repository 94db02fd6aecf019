"""Routes: a few lines each. Rerank routes hand the request to `handle_rerank` with their dialect."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from lastrank.api.dialects import cohere, jina, tei
from lastrank.api.errors import NotReadyError, response_for
from lastrank.api.handler import handle_rerank
from lastrank.api.metrics import CONTENT_TYPE_LATEST

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
    state = request.app.state.lastrank
    s = state.settings
    # Listing the model is an inference-adjacent route: it needs a key like the rerank routes.
    from starlette.concurrency import run_in_threadpool

    await run_in_threadpool(state.auth.authenticate, request.headers.get("authorization"))
    return {
        "object": "list",
        "data": [{
            "id": s.served_model_name,
            "object": "model",
            "created": int(state.started_at),
            "owned_by": "lastrank",
            "root": s.model_id or s.served_model_name,
            "aliases": sorted(s.accepted_model_names() - {s.served_model_name}),
            "ready": state.ready,
        }],
    }


@router.get("/health", tags=["info"])
async def health() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready", tags=["info"])
async def ready(request: Request) -> Response:
    """Readiness: the model is loaded and warmed up, the scheduler running."""
    state = request.app.state.lastrank
    scheduler_ok = state.scheduler is not None and getattr(state.scheduler, "running", True)
    if state.ready and scheduler_ok:
        return JSONResponse({"status": "ready", "model": state.settings.served_model_name})
    message = state.load_error or "the model is loading"
    return response_for(NotReadyError(message, retry_after=2.0), getattr(request.state, "request_id", None))


@router.get("/metrics", tags=["info"])
async def metrics(request: Request) -> Response:
    state = request.app.state.lastrank
    state.metrics.ready.set(1 if state.ready else 0)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def root(request: Request) -> dict:
    s = request.app.state.lastrank.settings
    return {"name": "lastrank", "model": s.served_model_name, "docs": "/docs",
            "routes": ["/v1/rerank", "/v2/rerank", "/rerank", "/v1/models", "/health", "/ready", "/metrics"],
            "time": time.time()}
