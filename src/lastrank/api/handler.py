"""`handle_rerank`: the one pipeline every rerank route runs, whatever its dialect.

    auth -> readiness -> parse (dialect schema) -> translate -> validate against server limits
         -> per-key rate limits -> scheduler.submit (cancelled if the client goes away)
         -> score_threshold, then top_n -> truncation warnings and headers
         -> dialect response rendered -> ledger row (durable before the response is sent) -> metrics

Validation runs before the rate limiter so a request that can never be served does not spend the
key's allowance. Errors are raised as domain errors and rendered by api/errors.py only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from lastrank.api import errors as api_errors
from lastrank.api.auth import Authenticator, other_key_header
from lastrank.api.dialects import jina, tei
from lastrank.api.dialects.base import ResponseInfo, Translated
from lastrank.api.limits import RateLimiter
from lastrank.api.metrics import Metrics
from lastrank.api.settings import ServerSettings
from lastrank.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
)
from lastrank.types import RerankRequest, RerankResult

log = logging.getLogger("lastrank.api")

# How often a waiting request checks whether its client is still connected.
DISCONNECT_POLL_S = 0.1
# Extra time past the request deadline before the handler gives up on the scheduler by itself.
DEADLINE_GRACE_S = 5.0
# Status logged (and counted) for a request whose client went away; nothing is sent.
CLIENT_CLOSED_REQUEST = 499
# Bodies larger than this are parsed and validated in a worker thread.
OFFLOAD_BODY_BYTES = 256 * 1024
# Response headers saying what the engine truncated (sent on every 200, in every dialect, TEI included).
TRUNCATED_DOCUMENTS_HEADER = "X-Lastrank-Truncated-Documents"
QUERY_TRUNCATED_HEADER = "X-Lastrank-Query-Truncated"
# At most this many document indices are named in a truncation warning.
WARNING_MAX_INDICES = 10


@dataclass
class ServerState:
    """Everything the handler needs; built by create_app, kept on app.state.lastrank."""

    settings: ServerSettings
    store: Any
    auth: Authenticator
    limiter: RateLimiter
    metrics: Metrics
    scheduler: Any = None
    ready: bool = False
    load_error: str | None = None
    started_at: float = field(default_factory=time.time)


class ClientDisconnected(Exception):
    pass


class RerankJSONResponse(JSONResponse):
    """UTF-8 JSON; falls back to \\u escapes when an echoed object field holds an unpaired surrogate
    (valid in JSON text, not encodable as UTF-8), so no client input can make rendering fail."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def search_units(documents: int) -> int:
    """Cohere bills one search unit per query with up to 100 documents."""
    return math.ceil(documents / 100) if documents else 0


class _NonFiniteNumber(ValueError):
    pass


def _reject_constant(name: str):
    # Python's parser accepts NaN, Infinity and -Infinity; JSON does not, and the response renderer
    # would refuse them after the model ran. Strict: the whole body is a 400 before any work.
    raise _NonFiniteNumber(f"{name} is not a JSON value (JSON has no NaN or Infinity; send a finite number or null)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 and the like overflow to inf
        shown = text if len(text) <= 24 else text[:24] + "..."
        raise _NonFiniteNumber(f"the number {shown} is too large for a 64-bit float")
    return value


def parse_json(raw: bytes) -> Any:
    """The body as JSON, strictly: NaN, Infinity, -Infinity and numbers that overflow a float are refused
    anywhere in it (InvalidRequestError, a 400), as are invalid UTF-8 and malformed JSON."""
    if not raw:
        raise InvalidRequestError("the request body is empty; send a JSON object")
    try:
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except UnicodeDecodeError:
        raise InvalidRequestError("the request body is not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise InvalidRequestError(f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except (ValueError, RecursionError) as e:
        raise InvalidRequestError(f"the request body is not valid JSON: {e}") from None


def pick_dialect(route_dialect, data: Any):
    """`/rerank` serves TEI when the body has `texts`, Jina otherwise (as llama.cpp does)."""
    if route_dialect is not None:
        return route_dialect
    if isinstance(data, dict) and "texts" in data:
        return tei
    return jina


def _check_text(what: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(f"{what} is not valid Unicode (it holds an unpaired surrogate escape)") from None


def validate(t: Translated, s: ServerSettings) -> None:
    if t.model is not None and t.model not in s.accepted_model_names():
        raise NotFoundError(f"model {t.model!r} is not served here; this server serves {s.served_model_name!r}")
    if not t.query.strip():
        raise InvalidRequestError("query must not be empty")
    if len(t.query) > s.max_query_chars:
        raise PayloadTooLargeError(f"the query has {len(t.query)} characters; this server accepts at most {s.max_query_chars}")
    if len(t.documents) > s.max_documents:
        raise PayloadTooLargeError(
            f"{len(t.documents)} documents; this server accepts at most {s.max_documents} per request")
    for i, doc in enumerate(t.documents):
        if len(doc) > s.max_document_chars:
            raise PayloadTooLargeError(
                f"documents[{i}] has {len(doc)} characters; this server accepts at most {s.max_document_chars}")
    _check_text("query", t.query)
    for i, doc in enumerate(t.documents):
        _check_text(f"documents[{i}]", doc)
    if t.instruction is not None:
        if len(t.instruction) > s.max_query_chars:
            raise PayloadTooLargeError(
                f"the instruction has {len(t.instruction)} characters; this server accepts at most {s.max_query_chars}")
        _check_text("instruction", t.instruction)


def to_request(t: Translated, s: ServerSettings, request_id: str) -> RerankRequest:
    top_n = t.top_n
    if top_n is not None and top_n > len(t.documents):
        top_n = None  # a huge top_n means "all"
    if t.score_threshold is not None:
        top_n = None  # the whole ranked list comes back; apply_threshold_and_top_n cuts it
    deadline = None if not s.request_timeout_s else time.monotonic() + s.request_timeout_s
    return RerankRequest(
        query=t.query,
        documents=list(t.documents),
        top_n=top_n,
        return_embeddings=t.return_embeddings,
        max_doc_length=t.max_doc_length or s.default_max_doc_length,
        max_query_length=t.max_query_length or s.default_max_query_length,
        instruction=t.instruction,
        request_id=request_id,
        deadline=deadline,
    )


def parse_and_validate(raw: bytes, route_dialect, s: ServerSettings):
    """-> (dialect, Translated), or the pydantic ValidationError (rendered as 422). Raises domain errors."""
    data = parse_json(raw)
    dialect = pick_dialect(route_dialect, data)
    if not isinstance(data, dict):
        raise InvalidRequestError(f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        body = dialect.Request.model_validate(data)
    except ValidationError as e:
        return e
    t = dialect.to_internal(body)
    validate(t, s)
    return dialect, t


def apply_threshold_and_top_n(result: RerankResult, t: Translated) -> RerankResult:
    """With a score_threshold: the engine ranked every document (top_n was not passed to it); drop the
    results below the threshold (kept: score >= threshold, so a NaN score is dropped), then keep top_n.
    Without one, the engine already applied top_n and the result is returned as is."""
    if t.score_threshold is None:
        return result
    kept = [r for r in result.results if r.relevance_score >= t.score_threshold]
    if t.top_n is not None:
        kept = kept[: t.top_n]
    return replace(result, results=kept)


def truncation_report(result: RerankResult, rr: RerankRequest) -> tuple[list[str], dict[str, str]]:
    """-> (warnings for meta.warnings, headers). Indices are named when Usage.doc_tokens shows which
    documents were cut (the engine flags a document whose token count reached max_doc_length)."""
    u = result.usage
    warnings = []
    n = u.truncated_documents
    if n:
        which = ""
        if len(u.doc_tokens) == len(rr.documents):
            cut = [i for i, k in enumerate(u.doc_tokens) if k >= rr.max_doc_length]
            if len(cut) == n:
                shown = ", ".join(str(i) for i in cut[:WARNING_MAX_INDICES])
                more = f" and {n - WARNING_MAX_INDICES} more" if n > WARNING_MAX_INDICES else ""
                which = f" (indices {shown}{more})"
        warnings.append(f"{n} of {len(rr.documents)} documents{which} were truncated to their first "
                        f"{rr.max_doc_length} tokens before ranking")
    if u.query_truncated:
        warnings.append(f"the query was truncated to its first {rr.max_query_length} tokens before ranking")
    headers = {TRUNCATED_DOCUMENTS_HEADER: str(n), QUERY_TRUNCATED_HEADER: "true" if u.query_truncated else "false"}
    return warnings, headers


async def submit_watching(state: ServerState, request: Request, rr: RerankRequest) -> RerankResult:
    """scheduler.submit, cancelled when the client disconnects (its pending blocks are dropped)."""
    task = asyncio.ensure_future(state.scheduler.submit(rr))
    give_up = None if rr.deadline is None else rr.deadline + DEADLINE_GRACE_S
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with suppress(BaseException):
                    await task
                raise ClientDisconnected()
            if give_up is not None and time.monotonic() > give_up:
                task.cancel()
                with suppress(BaseException):
                    await task
                raise DeadlineExceededError("the request did not finish before its deadline", retry_after=1.0)
    except BaseException:
        if not task.done():
            task.cancel()
        raise


def _usage_row(state: ServerState, *, request_id: str, key, route: str, dialect: str, result: RerankResult,
               latency_ms: float):
    from lastrank.store.ledger import UsageRow, cost_for

    return UsageRow(
        request_id=request_id,
        key_id=None if key is None else key.id,
        model=state.settings.served_model_name,
        route=route,
        dialect=dialect,
        documents=result.usage.documents,
        prompt_tokens=result.usage.prompt_tokens,
        blocks=result.usage.blocks,
        status=200,
        latency_ms=float(latency_ms),
        cost_usd=cost_for(result.usage.documents, state.settings.price_per_1k_docs),
    )


async def handle_rerank(request: Request, route: str, route_dialect=None) -> Response:
    state: ServerState = request.app.state.lastrank
    s = state.settings
    request_id: str = request.state.request_id
    started = time.monotonic()

    # A key verified in the last few seconds skips the thread hop and SQLite (Authenticator.cached).
    authorization = request.headers.get("authorization")
    key = state.auth.cached(authorization)
    if key is None:
        key = await run_in_threadpool(state.auth.authenticate, authorization,
                                      other_key_header=other_key_header(request.headers))
    request.state.key_id = None if key is None else key.id  # who a refusal is counted for (api/refusals.py)
    if not state.ready or state.scheduler is None:
        raise api_errors.NotReadyError(state.load_error or "the model is loading; retry shortly", retry_after=2.0)

    raw = await request.body()
    if len(raw) > OFFLOAD_BODY_BYTES:  # parsing megabytes of JSON must not stall the event loop
        parsed = await run_in_threadpool(parse_and_validate, raw, route_dialect, s)
    else:
        parsed = parse_and_validate(raw, route_dialect, s)
    if isinstance(parsed, ValidationError):
        return api_errors.validation_response(parsed.errors(), request_id)
    dialect, t = parsed
    if state.limiter.store is None:
        state.limiter.check(key, len(t.documents))
    else:  # the buckets are in a shared store (PostgreSQL): a database round trip, off the event loop
        await run_in_threadpool(state.limiter.check, key, len(t.documents))

    rr = to_request(t, s, request_id)
    try:
        result = await submit_watching(state, request, rr)
    except ClientDisconnected:
        log.info("request %s: client disconnected; its pending blocks were dropped", request_id)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    check = getattr(dialect, "check_result", None)
    if check is not None:
        check(result, t)
    result = apply_threshold_and_top_n(result, t)

    # Render first (it cannot fail on client input), then bill, then send: a 200 is never unbilled.
    warnings, truncation_headers = truncation_report(result, rr)
    info = ResponseInfo(request_id=request_id, model=s.served_model_name, search_units=search_units(len(t.documents)),
                        warnings=warnings)
    content, headers = dialect.from_internal(result, t, info)
    response = RerankJSONResponse(content, headers={**headers, **truncation_headers, "X-Request-Id": request_id})

    latency_ms = (time.monotonic() - started) * 1000.0
    if state.store is not None:
        row = _usage_row(state, request_id=request_id, key=key, route=route, dialect=dialect.NAME, result=result,
                         latency_ms=latency_ms)
        # Durable (committed, synchronous=FULL) before a byte of the response is sent.
        await run_in_threadpool(state.store.record_usage, row)
    state.metrics.observe_usage(result.usage)
    return response
