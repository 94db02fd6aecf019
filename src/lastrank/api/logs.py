"""Logging for `lastrank serve`: --log-level, and one access line per request.

--access-log json (the default) writes one JSON object per request on the `lastrank.access` logger:
    {"ts", "request_id", "method", "path", "status", "latency_ms", "key", "model", "documents", "tokens"}
`key` is the key's name (never the key), `model` the served model; documents and tokens are those of a
served rerank request (null otherwise). No query, document or header is ever logged.
--access-log text keeps uvicorn's own line; off logs none.
"""

from __future__ import annotations

import json
import logging
import sys
import time

access_log = logging.getLogger("lastrank.access")


def configure_logging(settings) -> None:
    level = settings.log_level.upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(level)
    access = logging.StreamHandler(sys.stdout)
    access.setFormatter(logging.Formatter("%(message)s"))  # the JSON line alone
    access_log.handlers[:] = [access]
    access_log.propagate = False
    access_log.setLevel(logging.INFO if settings.access_log == "json" else logging.CRITICAL + 1)


def log_access(scope, status: int, seconds: float) -> None:
    """One JSON line for this request (if the access log is on). Never raises."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    try:
        state = scope.get("state", {})
        usage = state.get("usage")
        access_log.info(json.dumps({
            "ts": round(time.time(), 3),
            "request_id": state.get("request_id"),
            "method": scope.get("method"),
            "path": scope.get("path"),
            "status": status,
            "latency_ms": round(seconds * 1000.0, 2),
            "key": state.get("key_name"),
            "model": state.get("model"),
            "documents": None if usage is None else usage.documents,
            "tokens": None if usage is None else usage.prompt_tokens,
        }, separators=(",", ":")))
    except Exception:  # a log line must never affect an answer
        logging.getLogger("lastrank.api").exception("could not write an access log line")
