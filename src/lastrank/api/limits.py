"""Per-key rate limits: requests per minute and documents per minute, as token buckets.

Each limit is a bucket holding up to one minute's allowance, refilled continuously (limit/60 per
second), so a key may burst its whole minute at once and then proceeds at the steady rate. A request
takes 1 request token and `len(documents)` document tokens, from both buckets or from neither. When
a bucket is short, the answer is 429 with `Retry-After` = the seconds until it holds enough.

A single request with more documents than the key's per-minute allowance could never pass, so it is
413 (split it), not 429 (retrying would loop forever).

State is in memory, per process (a restart refills every bucket), unless the store is shared by several
server processes (PostgreSQL, `store.shared_rate_limits`): then the buckets are rows in the store
(store/ratelimit.py, the same arithmetic) and every process sharing it spends from the same allowance.
`check` then makes a database round trip, so the handler calls it from a worker thread when `store` is set.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from lastrank.errors import PayloadTooLargeError, RateLimitedError
from lastrank.store.ratelimit import refill, wait_for


@dataclass
class _Bucket:
    capacity: float
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        self.tokens = refill(self.capacity, self.tokens, self.updated, now)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` tokens are available (0 if they are now)."""
        return wait_for(self.capacity, self.tokens, amount)


def _refuse(wait: float, what: str):
    raise RateLimitedError(f"rate limit exceeded for this API key ({what}); retry in {wait:.1f} s", retry_after=wait)


class RateLimiter:
    def __init__(self, *, default_requests_per_minute: int | None = None,
                 default_documents_per_minute: int | None = None, clock=time.monotonic, store=None):
        self.default_rpm = default_requests_per_minute
        self.default_dpm = default_documents_per_minute
        self.clock = clock
        self.store = store if getattr(store, "shared_rate_limits", False) else None  # else: in memory
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def _bucket(self, key_id: str, kind: str, limit: int, now: float) -> _Bucket:
        b = self._buckets.get((key_id, kind))
        if b is None or b.capacity != limit:  # new key, or its limit changed
            b = _Bucket(capacity=float(limit), tokens=float(limit), updated=now)
            self._buckets[(key_id, kind)] = b
        b.refill(now)
        return b

    def check(self, key, documents: int) -> None:
        """Take one request and `documents` documents from the key's buckets, or raise.

        `key` is a KeyRecord (with requests_per_minute / documents_per_minute) or None (open server:
        no per-key limits).
        """
        if key is None:
            return
        rpm = key.requests_per_minute if key.requests_per_minute is not None else self.default_rpm
        dpm = key.documents_per_minute if key.documents_per_minute is not None else self.default_dpm
        if rpm is None and dpm is None:
            return
        if dpm is not None and documents > dpm:
            raise PayloadTooLargeError(
                f"this request has {documents} documents but this API key may rank at most {dpm} documents "
                f"per minute; split the request"
            )
        if self.store is not None:
            short = self.store.take_rate_limit(key.id, requests_per_minute=rpm, documents_per_minute=dpm,
                                               documents=documents)
            if short is not None:
                wait, kind = short
                _refuse(wait, f"{rpm} requests per minute" if kind == "requests" else f"{dpm} documents per minute")
            return
        with self._lock:
            now = self.clock()
            rb = self._bucket(key.id, "requests", rpm, now) if rpm is not None else None
            db = self._bucket(key.id, "documents", dpm, now) if dpm is not None else None
            waits = []
            if rb is not None and rb.wait_for(1) > 0:
                waits.append((rb.wait_for(1), f"{rpm} requests per minute"))
            if db is not None and documents and db.wait_for(documents) > 0:
                waits.append((db.wait_for(documents), f"{dpm} documents per minute"))
            if waits:
                _refuse(*max(waits))
            if rb is not None:
                rb.tokens -= 1
            if db is not None:
                db.tokens -= documents
