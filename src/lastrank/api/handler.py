"""`handle_rerank`: the one pipeline every rerank route runs, whatever its dialect and model.

    auth -> parse (dialect schema) -> translate -> validate against server limits -> pick the model
         (404 unknown, 403 not allowed for this key, 503 still loading) -> per-key rate limits
         -> the model's scheduler.submit (cancelled if the client goes away; ranking, score_threshold
            and top_n happen in the backend: engine/backend.rank) -> truncation warnings and headers
         -> dialect response rendered -> ledger row (durable before the response is sent) -> metrics

Validation runs before the rate limiter so a request that can never be served does not spend the
key's allowance. Errors are raised as domain errors and rendered by api/errors.py only.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from lastrank.api import errors as api_errors
from lastrank.api.auth import Authenticator, other_key_header
from lastrank.api.dialects import jina, tei
from lastrank.api.dialects.base import IMAGE_UNSUPPORTED, ResponseInfo, Translated
from lastrank.api.limits import RateLimiter
from lastrank.api.metrics import Metrics
from lastrank.api.models import ModelTable, ServedModel
from lastrank.api.settings import ServerSettings
from lastrank.engine.backend import name_indices, refused_image
from lastrank.errors import InvalidRequestError, PayloadTooLargeError, PermissionDeniedError
from lastrank.images import UrlPolicy, decode_base64, fetch_image_url, image_input, is_url
from lastrank.store.credit import price_nano as credit_price_nano
from lastrank.store.ledger import UsageRow
from lastrank.types import RerankOptions, RerankRequest, RerankResult, check_unicode

log = logging.getLogger("lastrank.api")

# How often a waiting request checks whether its client is still connected.
DISCONNECT_POLL_S = 0.1
# Status logged (and counted) for a request whose client went away; nothing is sent.
CLIENT_CLOSED_REQUEST = 499
# Bodies larger than this are parsed and validated in a worker thread.
OFFLOAD_BODY_BYTES = 256 * 1024
# Response headers saying what the engine truncated (sent on every 200, in every dialect, TEI included).
TRUNCATED_DOCUMENTS_HEADER = "X-Lastrank-Truncated-Documents"
QUERY_TRUNCATED_HEADER = "X-Lastrank-Query-Truncated"
# At most this many document indices are named in a truncation warning.
WARNING_MAX_INDICES = 10
# Held credit expires this long after the request's deadline (hold_seconds).
CREDIT_HOLD_MARGIN_S = 300.0


@dataclass
class ServerState:
    """Everything the handler needs; built by create_app, kept on app.state.lastrank."""

    settings: ServerSettings
    store: Any
    auth: Authenticator
    limiter: RateLimiter
    metrics: Metrics
    models: ModelTable
    started_at: float = field(default_factory=time.time)
    prices: dict[str, float] = field(default_factory=dict)  # --price: USD per 1,000 documents by served model name

    @property
    def ready(self) -> bool:
        """Every served model is loaded, warmed up and has a running scheduler."""
        return all(m.ready and m.scheduler.running for m in self.models)


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


def search_units(passages: int) -> int:
    """Cohere bills one search unit per query with up to 100 documents, each chunk of a chunked document
    counting as one (called with Usage.ranked_passages)."""
    return math.ceil(passages / 100) if passages else 0


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


def validate(t: Translated, s: ServerSettings) -> None:
    """The server's limits (characters, documents, valid Unicode). The request's own shape was checked by the
    dialect's schema, and RerankRequest checks the rest once when it is built."""
    if not t.query.strip() and not (t.images and "query" in t.images):  # an image query has no text
        raise InvalidRequestError("query must not be empty")
    if len(t.query) > s.max_query_chars:
        raise PayloadTooLargeError(f"the query has {len(t.query)} characters; this server accepts at most {s.max_query_chars}")
    if len(t.documents) > s.max_documents:
        raise PayloadTooLargeError(
            f"{len(t.documents)} documents; this server accepts at most {s.max_documents} per request")
    for i, doc in enumerate(t.documents):
        if len(doc) > s.max_document_chars:
            raise PayloadTooLargeError(
                f"{t.documents_field}[{i}] has {len(doc)} characters; this server accepts at most {s.max_document_chars}")
    # checked here too (RerankRequest checks again) so that the message names the field as the wire does
    check_unicode("query", t.query)
    for i, doc in enumerate(t.documents):
        check_unicode(f"{t.documents_field}[{i}]", doc)
    instruction = t.options.instruction  # (RerankOptions checked its Unicode)
    if instruction is not None and len(instruction) > s.max_query_chars:
        raise PayloadTooLargeError(
            f"the instruction has {len(instruction)} characters; this server accepts at most {s.max_query_chars}")


def option_defaults(s: ServerSettings) -> RerankOptions:
    """The server's RerankOptions under every request's own (the dialects' wire_options): its --chunking."""
    return RerankOptions(chunking=s.chunking)


def to_request(t: Translated, s: ServerSettings, request_id: str) -> RerankRequest:
    deadline = None if not s.request_timeout_s else time.monotonic() + s.request_timeout_s
    return RerankRequest(query=t.query, documents=list(t.documents), options=t.options, request_id=request_id,
                         deadline=deadline, images=_decode_images(t.images, s, t.documents_field))


def _decode_images(images: dict | None, s: ServerSettings, documents_field: str = "documents") -> dict | None:
    """The wire's base64 / data-URI strings -> bytes, and image URLs fetched when the server allows their host
    (--allow-image-urls), opened and checked (lastrank/images.py); every error names the input as the wire
    does (`documents_field`: TEI's "texts")."""
    if not images:
        return None
    policy = UrlPolicy(tuple(s.allow_image_urls), s.allow_private_image_urls)
    out = {}
    for k, v in images.items():
        where = "query" if k == "query" else f"{documents_field}[{k}]"
        data = fetch_image_url(v, policy, where) if policy.hosts and is_url(v) else decode_base64(v, where)
        out[k] = image_input(data, where)
    return out


def image_refusal(t: Translated, refused: str | int) -> list[dict]:
    """Validation errors (a 422, as for any input the wire format cannot carry) for images sent to a text model:
    `refused`, the input engine/backend.refused_image names."""
    if refused == "query":
        return [{"loc": ["body", "query"], "msg": IMAGE_UNSUPPORTED, "type": "query_image"}]
    return [{"loc": ["body", t.documents_field, str(refused)], "msg": "image documents are not supported (this model "
             "ranks text only)", "type": "document_image"}]


def pick_model(state: ServerState, t: Translated, key) -> ServedModel:
    """The served model the request names (404 unknown / 400 ambiguous), if this key may use it (403)
    and it is ready (503)."""
    model = state.models.resolve(t.model)
    allowed = getattr(key, "models", None)
    if allowed and model.name not in allowed:
        raise PermissionDeniedError(f"this API key may not use model {model.name!r}; it may use "
                                    f"{', '.join(repr(m) for m in allowed)}")
    if not model.ready or model.scheduler is None:
        message = model.load_error or (f"the server is shutting down; the model {model.name!r} takes no new requests "
                                       "here" if model.stopping else f"the model {model.name!r} is loading; retry shortly")
        raise api_errors.NotReadyError(message, retry_after=2.0)
    return model


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
    t = dialect.to_internal(body, option_defaults(s))
    validate(t, s)
    return dialect, t


def truncation_report(result: RerankResult) -> tuple[list[str], dict[str, str]]:
    """-> (warnings for meta.warnings, headers), from what the plan settled (Usage.truncated_indices), or for a
    routed model from what the provider that answered reported (RerankResult.truncation)."""
    reported = result.truncation
    if reported is not None:
        return list(reported.warnings), {TRUNCATED_DOCUMENTS_HEADER: str(reported.documents),
                                         QUERY_TRUNCATED_HEADER: "true" if reported.query else "false"}
    u = result.usage
    warnings = []
    n = u.truncated_documents
    if n:
        which = name_indices(u.truncated_indices, WARNING_MAX_INDICES)
        if u.chunks:  # chunk mode: only max_chunks_per_doc windows of these were ranked
            warnings.append(f"{n} of {u.documents} documents (indices {which}) were ranked on their first "
                            f"chunks only (max_chunks_per_doc)")
        else:
            warnings.append(f"{n} of {u.documents} documents (indices {which}) were truncated to their first "
                            f"{u.max_doc_length} tokens before ranking")
    if u.query_truncated:
        warnings.append(f"the query was truncated to its first {u.max_query_length} tokens before ranking")
    headers = {TRUNCATED_DOCUMENTS_HEADER: str(n), QUERY_TRUNCATED_HEADER: "true" if u.query_truncated else "false"}
    return warnings, headers


async def submit_watching(scheduler, request: Request, rr: RerankRequest) -> RerankResult:
    """scheduler.submit, cancelled when the client disconnects (its pending blocks are dropped).
    The deadline is the scheduler's alone (rr.deadline): it answers DeadlineExceededError on time."""
    task = asyncio.ensure_future(scheduler.submit(rr))
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
    except BaseException:
        if not task.done():
            task.cancel()
        raise


def hold_seconds(s: ServerSettings) -> float:
    """How long held credit waits for its request before any server may give it back (store/credit.py): well past
    the request's deadline, so only a request whose server stopped loses its hold."""
    return (s.request_timeout_s or 3600.0) + CREDIT_HOLD_MARGIN_S


async def _release_credit(state: ServerState, request_id: str) -> None:
    try:
        await run_in_threadpool(state.store.release_credit, request_id)
    except Exception:  # e.g. the store is down: the hold expires and is swept back (hold_seconds)
        log.warning("request %s: could not give its held credit back now; it returns when the hold expires",
                    request_id, exc_info=True)


def _upstream_cost(model: ServedModel, provider: str | None, documents: int) -> float | None:
    """What the routed model's provider that answered costs the operator (its cost_per_1k_docs), else None."""
    for p in (model.scheduler.providers if model.scheduler is not None else ()):
        if provider is not None and p.name == provider:
            return credit_price_nano(documents, p.config.cost_per_1k_docs) / 1e9
    return None


def _usage_row(state: ServerState, *, request_id: str, key, model: ServedModel, route: str, dialect: str,
               result: RerankResult, latency_ms: float, price_nano: int):
    return UsageRow(
        request_id=request_id,
        key_id=None if key is None else key.id,
        model=model.name,
        route=route,
        dialect=dialect,
        documents=result.usage.documents,
        prompt_tokens=result.usage.prompt_tokens,
        blocks=result.usage.blocks,
        status=200,
        latency_ms=float(latency_ms),
        cost_usd=price_nano / 1e9,  # the price held (or quoted) before the work: the documents sent
        provider=result.provider,  # a routed model's provider that answered (lastrank/router); None otherwise
        upstream_cost_usd=_upstream_cost(model, result.provider, result.usage.documents),
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
    request.state.key_name = None if key is None else key.name  # for the access log (never the key itself)

    raw = await request.body()
    if len(raw) > OFFLOAD_BODY_BYTES:  # parsing megabytes of JSON must not stall the event loop
        parsed = await run_in_threadpool(parse_and_validate, raw, route_dialect, s)
    else:
        parsed = parse_and_validate(raw, route_dialect, s)
    if isinstance(parsed, ValidationError):
        return api_errors.validation_response(parsed.errors(), request_id)
    dialect, t = parsed
    model = pick_model(state, t, key)
    request.state.model = model.name  # for the access log and refusal counts
    refused = refused_image(t.images, model.capabilities)
    if refused is not None:
        return api_errors.validation_response(image_refusal(t, refused), request_id)
    if state.limiter.store is None:
        state.limiter.check(key, len(t.documents))
    else:  # the buckets are in a shared store (PostgreSQL): a database round trip, off the event loop
        await run_in_threadpool(state.limiter.check, key, len(t.documents))

    # The price is known now (it counts the documents sent). A key with credit or a budget holds it before
    # any model work: a 402 if it cannot pay; the hold becomes the charge with the ledger row, or goes back.
    price_nano = credit_price_nano(len(t.documents), state.prices.get(model.name, s.price_per_1k_docs))
    held = False
    if state.store is not None and key is not None and getattr(key, "billed_with_credit", False):
        await run_in_threadpool(state.store.hold_credit, key.id, request_id, price_nano, hold_seconds(s))
        held = True
    settled = False
    try:
        # decoding images (base64, PIL's header and pixels) is CPU work: off the event loop
        rr = await run_in_threadpool(to_request, t, s, request_id) if t.images else to_request(t, s, request_id)
        try:
            result = await submit_watching(model.scheduler, request, rr)
        except ClientDisconnected:
            log.info("request %s: client disconnected; its pending blocks were dropped", request_id)
            return Response(status_code=CLIENT_CLOSED_REQUEST)

        # Render first (it cannot fail on client input), then bill, then send: a 200 is never unbilled.
        warnings, truncation_headers = truncation_report(result)
        info = ResponseInfo(request_id=request_id, model=model.name,
                            search_units=search_units(result.usage.ranked_passages),
                            capabilities=model.capabilities, warnings=warnings)
        content, headers = dialect.from_internal(result, t, info)
        response = RerankJSONResponse(content, headers={**headers, **truncation_headers, "X-Request-Id": request_id})

        latency_ms = (time.monotonic() - started) * 1000.0
        if state.store is not None:
            row = _usage_row(state, request_id=request_id, key=key, model=model, route=route, dialect=dialect.NAME,
                             result=result, latency_ms=latency_ms, price_nano=price_nano)
            # Durable (committed, synchronous=FULL) before a byte of the response is sent.
            if held:  # the hold becomes the charge in the ledger row's transaction
                await run_in_threadpool(functools.partial(state.store.record_usage, row, held=True))
            else:
                await run_in_threadpool(state.store.record_usage, row)
        settled = True
    finally:
        if held and not settled:  # model error, deadline, client gone, store error: nothing billed, credit back
            await _release_credit(state, request_id)
    state.metrics.observe_usage(model.name, result.usage)
    request.state.usage = result.usage  # for the access log
    return response
