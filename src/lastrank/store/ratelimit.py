"""Per-key token buckets kept in the store, so every server process that shares the store shares the limits.

The arithmetic is the one api/limits.py documents: a bucket holds up to one minute's allowance
(`capacity`), refills continuously at capacity/60 per second, and a request takes from every bucket it
needs or from none. Here each bucket is a row of `rate_buckets`, read and written in one transaction that
holds the row (SQLite: the database's write lock, taken by BEGIN IMMEDIATE; PostgreSQL: SELECT ... FOR
UPDATE), so two processes can never both spend the same token. Time is the database's clock on
PostgreSQL (one clock for every replica, whatever the machines' own clocks say) and this machine's on
SQLite (one machine).

The buckets are counters, not records: the store writes them without waiting for the disk
(PostgreSQL: synchronous_commit off for that transaction), and losing them in a database crash only
refills them, as a server restart does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Want:
    kind: str  # "requests" or "documents"
    limit: int  # per minute: the bucket's capacity
    amount: float  # tokens this request takes


def refill(capacity: float, tokens: float, updated: float, now: float) -> float:
    """Tokens in a bucket at `now`, refilled since `updated` (a clock that went back refills nothing)."""
    return min(capacity, tokens + max(0.0, now - updated) * capacity / 60.0)


def wait_for(capacity: float, tokens: float, amount: float) -> float:
    """Seconds until `amount` tokens are available (0 if they are now)."""
    return 0.0 if tokens >= amount else (amount - tokens) / (capacity / 60.0)


def take(conn, key_id: str, wants: list[Want], now: float, *, for_update: str) -> tuple[float, Want] | None:
    """Take every want from its bucket, or none of them. The caller holds a write transaction.

    Returns None when taken, else (seconds to wait, the want that waits longest).
    `for_update` is the row-locking clause of the backend ("" for SQLite).
    """
    state = {}
    for w in wants:
        # make sure the row exists (full), so that the row lock below has something to hold
        conn.execute(
            "INSERT INTO rate_buckets (key_id, kind, capacity, tokens, updated) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (key_id, kind) DO NOTHING",
            (key_id, w.kind, float(w.limit), float(w.limit), now),
        )
        capacity, tokens, updated = conn.execute(
            f"SELECT capacity, tokens, updated FROM rate_buckets WHERE key_id = ? AND kind = ?{for_update}",
            (key_id, w.kind),
        ).fetchone()
        if capacity != float(w.limit):  # the key's limit changed: start a full bucket of the new size
            tokens = float(w.limit)
        state[w.kind] = refill(float(w.limit), tokens, updated, now)
    waits = [(wait_for(float(w.limit), state[w.kind], w.amount), w) for w in wants if w.amount > 0]
    waits = [(s, w) for s, w in waits if s > 0]
    if waits:
        return max(waits, key=lambda sw: sw[0])
    for w in wants:
        conn.execute(
            "UPDATE rate_buckets SET capacity = ?, tokens = ?, updated = ? WHERE key_id = ? AND kind = ?",
            (float(w.limit), state[w.kind] - w.amount, now, key_id, w.kind),
        )
    return None
