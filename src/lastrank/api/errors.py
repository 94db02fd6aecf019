"""The one place that maps domain errors to HTTP: a status table and the exception handlers.

Every error body, whatever the route or dialect, has the same shape:

    {"detail": "<message>",                        # what Jina-style clients (LangChain, LlamaIndex, Haystack) read
     "message": "<message>",                       # what Cohere documents for its error bodies
     "error": {"message": "<message>", "type": "<stable type>", "code": <status>}}

Retryable errors (429, 503, 504) carry a `Retry-After` header (whole seconds), 401 a
`WWW-Authenticate: Bearer`. Anything unexpected becomes a 500 with the request id and a logged stack;
the bad-input table and the fuzz test in tests/api assert that no client input reaches it. Every 500
(and 408) says `Connection: close`, so the server closes the connection cleanly after it: whatever
broke, no pipelined request is left waiting on a connection in an unknown state.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lastrank.errors import (
    AuthError,
    DeadlineExceededError,
    InsufficientCreditError,
    InvalidRequestError,
    LastrankError,
    ModelError,
    ModelNotAvailableError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    StoreUnavailableError,
)

log = logging.getLogger("lastrank.api")


class NotReadyError(LastrankError):
    """The model is still loading or warming up."""

    type = "not_ready_error"


# Looked up along the exception's MRO, so a subclass finds its own row before its parent's.
STATUS_BY_ERROR: dict[type[LastrankError], int] = {
    PayloadTooLargeError: 413,
    InvalidRequestError: 400,
    AuthError: 401,
    InsufficientCreditError: 402,  # and BudgetExceededError: no credit (or budget) left for this price
    PermissionDeniedError: 403,
    NotFoundError: 404,
    RateLimitedError: 429,
    OverloadedError: 503,
    NotReadyError: 503,
    ModelNotAvailableError: 503,
    StoreUnavailableError: 503,  # a store error that is not this one (e.g. a schema too new) is a 500
    DeadlineExceededError: 504,
    ModelError: 500,
    LastrankError: 500,
}

# Retry-After for retryable errors that carry no hint of their own.
DEFAULT_RETRY_AFTER_S = {429: 1.0, 503: 1.0, 504: 1.0}

REASONS = {400: "bad request", 404: "not found", 405: "method not allowed", 413: "payload too large",
           415: "unsupported media type"}


def status_for(exc: LastrankError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def error_body(message: str, type_: str, status: int, **extra) -> dict:
    error = {"message": message, "type": type_, "code": status}
    error.update(extra)
    return {"detail": message, "message": message, "error": error}


def error_response(status: int, message: str, type_: str, *, retry_after: float | None = None,
                   request_id: str | None = None, close: bool | None = None, **extra) -> JSONResponse:
    """`close` (default: for 500 and 408) adds `Connection: close`; uvicorn then closes after sending."""
    headers = {}
    if close if close is not None else status in (408, 500):
        headers["Connection"] = "close"
    if retry_after is None and status in DEFAULT_RETRY_AFTER_S:
        retry_after = DEFAULT_RETRY_AFTER_S[status]
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if request_id:
        headers["X-Request-Id"] = request_id
    return JSONResponse(error_body(message, type_, status, **extra), status_code=status, headers=headers)


def response_for(exc: LastrankError, request_id: str | None = None) -> JSONResponse:
    status = status_for(exc)
    if status >= 500 and status not in (503, 504):
        log.error("request %s failed: %s: %s", request_id, type(exc).__name__, exc.message)
    return error_response(status, exc.message, exc.type, retry_after=exc.retry_after, request_id=request_id)


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _format_validation_errors(errors) -> tuple[str, list[dict]]:
    details = []
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        msg = err.get("msg", "invalid")
        parts.append(f"{where}: {msg}")
        details.append({"loc": loc, "msg": msg, "type": err.get("type", "value_error")})
    shown = "; ".join(parts[:5]) + (f"; and {len(parts) - 5} more" if len(parts) > 5 else "")
    return f"invalid request: {shown}", details


def validation_response(errors, request_id: str | None = None) -> JSONResponse:
    message, details = _format_validation_errors(errors)
    return error_response(422, message, "invalid_request_error", request_id=request_id, details=details)


def install(app: FastAPI) -> None:
    """Register the handlers: domain errors, validation (422), HTTP errors (404/405...), anything else (500)."""

    @app.exception_handler(LastrankError)
    async def _domain(request: Request, exc: LastrankError):
        return response_for(exc, _request_id(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return validation_response(exc.errors(), _request_id(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        status = exc.status_code
        message = exc.detail if isinstance(exc.detail, str) else REASONS.get(status, "error")
        type_ = {404: "not_found_error", 405: "invalid_request_error", 401: "authentication_error",
                 403: "permission_error", 413: "payload_too_large"}.get(status, "invalid_request_error")
        if status >= 500:
            type_ = "internal_error"
        return error_response(status, message, type_, request_id=_request_id(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # Normally unreachable: RequestContextMiddleware (app.py) answers unexpected errors first.
        return internal_error_response(_request_id(request))


def internal_error_response(request_id: str | None) -> JSONResponse:
    """The 500 for an unexpected exception (the caller is inside its `except`, so the stack is logged)."""
    log.exception("request %s: unexpected error", request_id)
    return error_response(500, f"internal server error (request id {request_id}); this is a bug", "internal_error",
                          request_id=request_id)
