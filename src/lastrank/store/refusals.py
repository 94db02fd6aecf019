"""Refused requests: counted per UTC day, key, route, status and model; never billed.

The ledger (ledger.py) holds one row per 200. A refusal (401, 403, 413, 422, 429, 503, ...) gets no row
there: it only increments a counter in `refusals`, one row per (day, key, route, status, model), so a
flood of bad requests cannot grow the database by more than a few rows a day. A request without a valid
key (a 401, or a server running open) counts under key_id '' and shows as "(no key)".

The API records a refusal through `Store.record_refusal`, which never blocks and never raises: it adds
to an in-memory tally that a background thread writes in one transaction whenever there is something to
write (`RefusalRecorder`). A crash can lose the refusals of its last moments, which bills nobody;
`Store.close()` and `flush_refusals()` write what is pending.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from lastrank.errors import StoreUnavailableError
from lastrank.store.ledger import utc_now

log = logging.getLogger("lastrank.store")

NO_KEY = ""  # key_id of refusals that had no valid key
WARN_EVERY_S = 30.0  # while the store cannot be written, how often the background writer says so

# (day, key_id, route, status, model)
RefusalKey = tuple[str, str, str, int, str]


def add(conn, counts: dict[RefusalKey, int]) -> None:
    """Add `counts` to the counters; the caller holds a write transaction."""
    for (day, key_id, route, status, model), n in sorted(counts.items()):  # sorted: a fixed lock order
        conn.execute(
            "INSERT INTO refusals (day, key_id, route, status, model, count) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (day, key_id, route, status, model) DO UPDATE SET count = refusals.count + excluded.count",
            (day, key_id, route, status, model, n),
        )


def _where(key_ids: list[str] | None, since: str | None) -> tuple[str, list]:
    clauses, params = [], []
    if key_ids is not None:
        clauses.append(f"r.key_id IN ({', '.join('?' * len(key_ids))})")
        params.extend(key_ids)
    if since is not None:
        # counters are per day: an instant bound counts its whole day
        clauses.append("r.day >= ?")
        params.append(since[:10])
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def list_rows(conn, key_ids: list[str] | None, since: str | None) -> list[dict]:
    """Every counter, ordered by day, key, route, status, model; key_id None for refusals without a key."""
    where, params = _where(key_ids, since)
    rows = conn.execute(
        f"SELECT r.day, r.key_id, r.route, r.status, r.model, r.count FROM refusals r{where}"
        " ORDER BY r.day, r.key_id, r.route, r.status, r.model",
        params,
    ).fetchall()
    return [
        {"day": d, "key_id": k or None, "route": route, "status": status, "model": model, "count": n}
        for d, k, route, status, model, n in rows
    ]


def per_key_and_day(conn, key_ids: list[str] | None, since: str | None) -> list[tuple]:
    """-> [(day, key_id or None, key name or None, refusals)] summed over route, status and model."""
    where, params = _where(key_ids, since)
    rows = conn.execute(
        "SELECT r.day, r.key_id, k.name, CAST(SUM(r.count) AS BIGINT)"
        f" FROM refusals r LEFT JOIN api_keys k ON k.id = r.key_id{where}"
        " GROUP BY r.day, r.key_id, k.name",
        params,
    ).fetchall()
    return [(day, key_id or None, name, n) for day, key_id, name, n in rows]


class RefusalRecorder:
    """A non-blocking tally of refusals, written to the store by one background thread."""

    def __init__(self, store):
        self._store = store
        self._lock = threading.Lock()
        self._pending: Counter = Counter()
        self._wake = threading.Event()
        self._stopped = False
        self._write_lock = threading.Lock()  # flush() and the thread never write the same tally twice
        self._last_warning = -WARN_EVERY_S
        self._thread = threading.Thread(target=self._run, name="lastrank-refusals", daemon=True)
        self._thread.start()

    def record(self, key_id: str | None, route: str, status: int, model: str) -> None:
        day = utc_now().strftime("%Y-%m-%d")
        with self._lock:
            self._pending[(day, key_id or NO_KEY, str(route), int(status), str(model or ""))] += 1
        self._wake.set()

    def _take(self) -> Counter:
        with self._lock:
            pending, self._pending = self._pending, Counter()
        return pending

    def flush(self) -> None:
        """Write everything recorded so far (in the calling thread); raises if the store cannot."""
        with self._write_lock:
            pending = self._take()
            if not pending:
                return
            try:
                self._store.record_refusals(dict(pending))
            except BaseException:
                with self._lock:  # keep them for the next try
                    self._pending.update(pending)
                raise

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait()
            self._wake.clear()
            if self._stopped:
                break
            try:
                self.flush()
            except StoreUnavailableError as e:  # an outage: one line now and then, not a stack per refusal
                now = time.monotonic()
                if now - self._last_warning > WARN_EVERY_S:
                    self._last_warning = now
                    log.warning("could not write refused-request counts (kept for the next try): %s", e.message)
            except Exception:
                log.exception("could not write refused-request counts; retrying with the next one")

    def close(self) -> None:
        """Stop the thread and write what is pending."""
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()
