"""Domain errors. No HTTP here: only `lastrank.api.errors` maps these to status codes."""

from __future__ import annotations


class LastrankError(Exception):
    """Base of every error lastrank raises on purpose. `type` is a stable machine-readable name."""

    type = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class InvalidRequestError(LastrankError, ValueError):
    """The caller sent something we cannot rank (wrong type, empty query, bad parameter)."""

    type = "invalid_request_error"


class PayloadTooLargeError(InvalidRequestError):
    """Too many documents, too many characters, or too large a body."""

    type = "payload_too_large"


class AuthError(LastrankError):
    """Missing or wrong API key."""

    type = "authentication_error"


class PermissionDeniedError(LastrankError):
    """A valid key that may not do this (e.g. revoked)."""

    type = "permission_error"


class NotFoundError(LastrankError):
    """Unknown model or route."""

    type = "not_found_error"


class RateLimitedError(LastrankError):
    """A per-key limit is exhausted; `retry_after` says when to come back."""

    type = "rate_limit_error"


class InsufficientCreditError(LastrankError):
    """The key's credit cannot pay for this request (its price is known before any model work: it counts the
    documents sent). Nothing was run and nothing was billed."""

    type = "insufficient_credit"


class BudgetExceededError(InsufficientCreditError):
    """The key's spend budget for the current period (UTC day or month) would be exceeded; `retry_after` is the
    time until the period resets."""

    type = "budget_exceeded"


class OverloadedError(LastrankError):
    """The admission queue is full; `retry_after` is a hint."""

    type = "overloaded_error"


class DeadlineExceededError(LastrankError):
    """The request's deadline passed before its blocks ran."""

    type = "timeout_error"


class StoreError(LastrankError):
    """The store (keys, ledger) cannot be opened, or is not one this version understands, or is closed."""

    type = "store_error"


class StoreUnavailableError(StoreError):
    """The store cannot be reached or written just now: its database server is down or restarting, or a
    lock or a disk keeps writes out. Nothing was billed; `retry_after` is a hint."""

    type = "store_unavailable"


class ModelError(LastrankError):
    """The model failed while running a block, or cannot be loaded."""

    type = "model_error"


class ModelNotAvailableError(ModelError):
    """A checkpoint cannot be found (offline, no cached copy, wrong folder)."""

    type = "model_not_available"
