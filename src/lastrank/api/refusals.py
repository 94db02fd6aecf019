"""Counting refused requests for `lastrank usage` (ERRORS): every 4xx/5xx a rerank route answers.

`count_refusal(scope, status)` is called once per request by RequestContextMiddleware (app.py) after the
response has gone out, with the status that was sent. It hands the count to the store
(`Store.record_refusal`: an in-memory tally that a background thread writes), so it never waits for the
database, never raises, and cannot change or delay the response.

Who is counted: the key the handler authenticated (`request.state.key_id`, set by handle_rerank right
after authentication); for a 403 the key id in the bearer token (the authenticator answers 403 only for
a key id the store holds as revoked); otherwise, e.g. a 401 or a 413 answered before authentication,
"(no key)". Nothing is billed for these requests: the ledger holds 200s only.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger("lastrank.api")

RERANK_ROUTES = frozenset({"/v1/rerank", "/v2/rerank", "/rerank"})
CLIENT_CLOSED_REQUEST = 499  # the client left: nothing was answered, so nothing was refused
_KEY_ID_RE = re.compile(rb"\s*bearer\s+lr-([0-9a-f]{12})-", re.IGNORECASE)


def _revoked_key_id(scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            match = _KEY_ID_RE.match(value)
            return match.group(1).decode() if match else None
    return None


def count_refusal(scope, status: int) -> None:
    """Count a rerank request answered with `status` >= 400 (others are ignored). Never raises."""
    try:
        if status < 400 or status == CLIENT_CLOSED_REQUEST or scope.get("path") not in RERANK_ROUTES:
            return
        app = scope.get("app")
        state = getattr(getattr(app, "state", None), "lastrank", None)
        store = getattr(state, "store", None)
        if store is None or not hasattr(store, "record_refusal"):
            return
        key_id = scope.get("state", {}).get("key_id")
        if key_id is None and status == 403:
            key_id = _revoked_key_id(scope)
        model = scope.get("state", {}).get("model") or ""  # the requested model, once the handler resolved it
        store.record_refusal(key_id, scope["path"], status, model)
    except Exception:  # counting must never affect an answer
        log.exception("could not count a refused request")
