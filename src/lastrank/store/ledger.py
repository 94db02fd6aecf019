"""The usage ledger: one row per answered request, written before the response is sent.

Functions take an open connection of either backend (base.py); the store wraps writes in a transaction
that is committed and durable (SQLite: WAL, synchronous=FULL; PostgreSQL: synchronous_commit on) before
`record_usage` returns. `request_id` is the
primary key and a repeated insert is ignored, so a retried write never bills a request twice.
Costs are stored as integer nano-dollars so that totals are exact sums.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timezone

from lastrank.errors import InvalidRequestError

DEFAULT_PRICE_PER_1K_DOCS = 0.008  # USD, per 1,000 documents ranked
_NANO = 1_000_000_000
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # fixed width, so text order is time order
_DAY_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def format_ts(dt: datetime) -> str:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"timestamps must be timezone-aware (UTC), got naive {dt!r}")
    return dt.astimezone(timezone.utc).strftime(_TS_FORMAT)


def parse_ts(text: str) -> datetime:
    return datetime.strptime(text, _TS_FORMAT).replace(tzinfo=timezone.utc)


def cost_for(documents: int, price_per_1k_docs: float = DEFAULT_PRICE_PER_1K_DOCS) -> float:
    """USD for ranking `documents` documents at `price_per_1k_docs` USD per 1,000 (rounded to 1e-9)."""
    if isinstance(documents, bool) or not isinstance(documents, int) or documents < 0:
        raise ValueError(f"documents must be a non-negative integer, got {documents!r}")
    if isinstance(price_per_1k_docs, bool) or not isinstance(price_per_1k_docs, (int, float)):
        raise ValueError(f"price_per_1k_docs must be a number, got {price_per_1k_docs!r}")
    if not math.isfinite(price_per_1k_docs) or price_per_1k_docs < 0:
        raise ValueError(f"price_per_1k_docs must be a finite number >= 0, got {price_per_1k_docs!r}")
    return round(documents * price_per_1k_docs / 1000, 9)


def _nonneg_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"UsageRow.{name} must be a non-negative integer, got {value!r}")


def _nonneg_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"UsageRow.{name} must be a finite number >= 0, got {value!r}")


def _str(name: str, value: object, *, empty_ok: bool = False) -> None:
    if not isinstance(value, str) or (not empty_ok and not value):
        raise ValueError(f"UsageRow.{name} must be a {'' if empty_ok else 'non-empty '}string, got {value!r}")


@dataclass(frozen=True)
class UsageRow:
    """One answered request. Checked on construction: a malformed row never reaches the database."""

    request_id: str  # unique per request; the idempotency key of the ledger
    key_id: str | None  # None when the server runs without keys
    model: str
    route: str  # e.g. "/v1/rerank"
    dialect: str  # e.g. "jina", "cohere-v2", "tei"
    documents: int
    prompt_tokens: int
    blocks: int
    status: int  # HTTP status sent
    latency_ms: float
    cost_usd: float  # computed by the caller, e.g. with cost_for()
    created_at: datetime | None = None  # UTC; None: the time of record_usage
    provider: str | None = None  # a routed model's provider that answered (lastrank/router); None: a local model
    upstream_cost_usd: float | None = None  # what that provider costs the operator (its cost_per_1k_docs); None: unknown

    def __post_init__(self):
        _str("request_id", self.request_id)
        if self.key_id is not None:
            _str("key_id", self.key_id)
        _str("model", self.model, empty_ok=True)
        _str("route", self.route)
        _str("dialect", self.dialect, empty_ok=True)
        _nonneg_int("documents", self.documents)
        _nonneg_int("prompt_tokens", self.prompt_tokens)
        _nonneg_int("blocks", self.blocks)
        if isinstance(self.status, bool) or not isinstance(self.status, int) or not 100 <= self.status <= 599:
            raise ValueError(f"UsageRow.status must be an HTTP status (100-599), got {self.status!r}")
        _nonneg_number("latency_ms", self.latency_ms)
        _nonneg_number("cost_usd", self.cost_usd)
        if self.created_at is not None:
            if not isinstance(self.created_at, datetime):
                raise ValueError(f"UsageRow.created_at must be a datetime or None, got {self.created_at!r}")
            format_ts(self.created_at)  # rejects naive datetimes
        if self.provider is not None:
            _str("provider", self.provider)
        if self.upstream_cost_usd is not None:
            _nonneg_number("upstream_cost_usd", self.upstream_cost_usd)

    def to_dict(self) -> dict:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["created_at"] = None if self.created_at is None else format_ts(self.created_at)
        return d


_COLUMNS = (
    "request_id, key_id, model, route, dialect, documents, prompt_tokens, blocks, status, latency_ms,"
    " cost_nano_usd, created_at, provider, upstream_cost_nano_usd"
)


def insert(conn, row: UsageRow) -> bool:
    """Insert unless the request_id is there already. True if a row was written."""
    created_at = format_ts(row.created_at if row.created_at is not None else utc_now())
    # ON CONFLICT(request_id), not INSERT OR IGNORE: OR IGNORE would also swallow NOT NULL violations
    cur = conn.execute(
        f"INSERT INTO usage ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT(request_id) DO NOTHING",
        (
            row.request_id,
            row.key_id,
            row.model,
            row.route,
            row.dialect,
            row.documents,
            row.prompt_tokens,
            row.blocks,
            row.status,
            float(row.latency_ms),
            round(row.cost_usd * _NANO),
            created_at,
            row.provider,
            None if row.upstream_cost_usd is None else round(row.upstream_cost_usd * _NANO),
        ),
    )
    return cur.rowcount == 1


def delete(conn, request_id: str) -> None:
    """Delete a request's row, if any (only for a request whose insert failed with an unknown outcome and that
    was answered with an error: see BaseStore.record_usage)."""
    conn.execute("DELETE FROM usage WHERE request_id = ?", (request_id,))


def _row(r: tuple) -> UsageRow:
    *head, cost_nano, created_at, provider, upstream = r
    return UsageRow(*head, cost_usd=cost_nano / _NANO, created_at=parse_ts(created_at), provider=provider,
                    upstream_cost_usd=None if upstream is None else upstream / _NANO)


def since_bound(since: date | datetime | str | None) -> str | None:
    """A lower bound on `created_at` text: a day (inclusive, UTC) or an aware instant."""
    if since is None:
        return None
    if isinstance(since, datetime):
        return format_ts(since)
    if isinstance(since, date):
        return since.isoformat()  # "2026-11-27" sorts before every timestamp of that day
    if isinstance(since, str):
        text = since.strip()
        if _DAY_RE.fullmatch(text):
            try:
                return date.fromisoformat(text).isoformat()
            except ValueError:  # e.g. 2026-02-30
                pass
        raise InvalidRequestError(f"since must be a day as YYYY-MM-DD, got {since!r}")
    raise TypeError(f"since must be a date, datetime, 'YYYY-MM-DD' string or None, got {type(since).__name__}")


def _where(key_ids: list[str] | None, since: str | None) -> tuple[str, list]:
    clauses, params = [], []
    if key_ids is not None:
        clauses.append(f"u.key_id IN ({', '.join('?' * len(key_ids))})")
        params.extend(key_ids)
    if since is not None:
        clauses.append("u.created_at >= ?")
        params.append(since)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def get(conn, request_id: str) -> UsageRow | None:
    r = conn.execute(f"SELECT {_COLUMNS} FROM usage WHERE request_id = ?", (request_id,)).fetchone()
    return None if r is None else _row(r)


def list_rows(conn, key_ids: list[str] | None, since: str | None, limit: int | None) -> list[UsageRow]:
    where, params = _where(key_ids, since)
    sql = f"SELECT {_COLUMNS} FROM usage u{where} ORDER BY u.created_at, u.request_id"
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
        sql += " LIMIT ?"
        params.append(limit)
    return [_row(r) for r in conn.execute(sql, params)]


def count(conn, key_ids: list[str] | None, since: str | None) -> int:
    where, params = _where(key_ids, since)
    return conn.execute(f"SELECT COUNT(*) FROM usage u{where}", params).fetchone()[0]


def summary(conn, key_ids: list[str] | None, since: str | None) -> list[dict]:
    """Ledger totals per UTC day and key, ordered by day, then the keyless rows, then key id."""
    where, params = _where(key_ids, since)
    # CAST: PostgreSQL sums BIGINT into NUMERIC (a Decimal in Python); these sums fit 64 bits
    rows = conn.execute(
        "SELECT substr(u.created_at, 1, 10) AS day, u.key_id, k.name, COUNT(*),"
        " CAST(SUM(CASE WHEN u.status >= 400 THEN 1 ELSE 0 END) AS BIGINT), CAST(SUM(u.documents) AS BIGINT),"
        " CAST(SUM(u.prompt_tokens) AS BIGINT), CAST(SUM(u.blocks) AS BIGINT), CAST(SUM(u.cost_nano_usd) AS BIGINT)"
        f" FROM usage u LEFT JOIN api_keys k ON k.id = u.key_id{where}"
        " GROUP BY substr(u.created_at, 1, 10), u.key_id, k.name ORDER BY day, u.key_id IS NOT NULL, u.key_id",
        params,
    ).fetchall()
    return [
        {
            "day": day,
            "key_id": key_id,
            "key_name": name,
            "requests": n,
            "errors": errors,
            "documents": docs,
            "prompt_tokens": tokens,
            "blocks": blocks,
            "cost_usd": cost / _NANO,
        }
        for day, key_id, name, n, errors, docs, tokens, blocks, cost in rows
    ]


def total(summary_rows: list[dict]) -> dict:
    """The grand total of `usage_summary` rows (costs summed in nano-dollars, so exactly)."""
    out = {"requests": 0, "errors": 0, "documents": 0, "prompt_tokens": 0, "blocks": 0}
    cost_nano = 0
    for r in summary_rows:
        for k in out:
            out[k] += r[k]
        cost_nano += round(r["cost_usd"] * _NANO)
    out["cost_usd"] = cost_nano / _NANO
    return out
