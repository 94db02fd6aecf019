"""Credit, budgets and held credit: the money of each key, in exact integer nano-dollars (docs/billing.md).

A key's `balance_nano_usd` is its credit left (NULL: unlimited, lastrank's behaviour before credit existed);
`credit_grants` records every grant, top-up and adjustment, so for any key

    balance == sum(grants) - sum(ledger costs of its requests billed since credit was granted) - sum(held)

A request's price is known before any model work (it counts the documents sent), so the API *holds* it first:

    hold    (before model work)   one transaction: sweep this key's expired holds back; check the budget
                                  (ledger spend in the period + credit held); debit the balance with a
                                  conditional UPDATE (`... WHERE balance_nano_usd >= price`); insert the hold.
                                  Short: InsufficientCreditError / BudgetExceededError, a 402, nothing run.
    settle  (the answer is ready) in the transaction that writes the ledger row (BaseStore.record_usage):
                                  delete the hold; the debit becomes the charge. No hold left: not billed.
    release (any failure)         delete the hold and give its debit back.

A process that dies between hold and settle leaves its hold behind: every hold has an expiry (the request's
deadline plus a margin, by the database's clock) after which the next hold of the same key, or the sweep a
server runs at start, gives it back. Every step deletes the hold row and moves the money in one transaction,
and only the transaction that deletes the row moves it, so a hold is charged or given back exactly once, even
with several server processes on one PostgreSQL (the key row is locked FOR UPDATE; SQLite's write lock
excludes every other writer).

Functions take an open connection inside a write transaction (base.py), except the read-only summaries.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

from lastrank.errors import BudgetExceededError, InsufficientCreditError, InvalidRequestError, NotFoundError
from lastrank.store.ledger import format_ts, utc_now

log = logging.getLogger("lastrank.store")

NANO = 1_000_000_000
PERIODS = ("day", "month")
# at most this much USD in one amount: its nano-dollars stay far inside a signed 64-bit integer
MAX_USD = 1_000_000_000


def to_nano(usd, what: str = "an amount") -> int:
    """USD (a number or decimal text, at most 9 decimals) as exact integer nano-dollars; InvalidRequestError else."""
    if isinstance(usd, bool):
        raise InvalidRequestError(f"{what} must be a number of USD, got {usd!r}")
    try:
        d = Decimal(str(usd).strip()) if isinstance(usd, (str, int, float)) else None
    except InvalidOperation:
        d = None
    if d is None or not d.is_finite():
        raise InvalidRequestError(f"{what} must be a number of USD (e.g. 5 or 0.25), got {usd!r}")
    nano = d * NANO
    if nano != nano.to_integral_value():
        raise InvalidRequestError(f"{what} has more than 9 decimals (the ledger counts nano-dollars): {usd!r}")
    if abs(d) > MAX_USD:
        raise InvalidRequestError(f"{what} must be at most {MAX_USD} USD, got {usd!r}")
    return int(nano)


def usd(nano: int | None) -> float | None:
    return None if nano is None else nano / NANO


def price_nano(documents: int, price_per_1k_docs: float) -> int:
    """The exact price of ranking `documents` documents, in nano-dollars (half up to the nano-dollar)."""
    per_1k = to_nano(price_per_1k_docs, "a price per 1,000 documents")
    if per_1k < 0:
        raise ValueError(f"a price must be >= 0, got {price_per_1k_docs!r}")
    return (documents * per_1k + 500) // 1000


def parse_budget(text: str) -> tuple[int, str]:
    """'1.00/day' or '20/month' -> (nano-dollars, period)."""
    amount, sep, period = str(text).partition("/")
    period = period.strip().lower()
    if not sep or period not in PERIODS:
        raise InvalidRequestError(f"a budget reads USD/PERIOD with PERIOD day or month (e.g. 1.00/day), got {text!r}")
    nano = to_nano(amount, "a budget")
    if nano <= 0:
        raise InvalidRequestError(f"a budget must be more than 0 USD, got {text!r}")
    return nano, period


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """(start, reset) of the UTC day or month holding `now`."""
    now = now.astimezone(timezone.utc)
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    if period == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        reset = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return start, reset
    raise ValueError(f"unknown budget period {period!r}")


def _key_row(conn, key_id: str, for_update: str):
    row = conn.execute(
        f"SELECT balance_nano_usd, budget_nano_usd, budget_period, revoked_at FROM api_keys WHERE id = ?{for_update}",
        (key_id,),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no key with id {key_id!r}")
    return row


def _refund(conn, key_id: str, nano: int) -> None:
    """Give `nano` back to a key's balance (a key made unlimited meanwhile keeps NULL)."""
    if nano:
        conn.execute("UPDATE api_keys SET balance_nano_usd = balance_nano_usd + ? WHERE id = ?"
                     " AND balance_nano_usd IS NOT NULL", (nano, key_id))


def grant(conn, key_id: str, amount_nano: int, note: str | None, for_update: str) -> int:
    """Add `amount_nano` (negative: an adjustment) to the key's balance; an unlimited key starts from 0.
    Refuses a result below 0. Returns the new balance."""
    balance, *_ = _key_row(conn, key_id, for_update)
    new = (balance or 0) + amount_nano
    if new < 0:
        raise InvalidRequestError(f"the key has {usd(balance or 0):.9f} USD of credit; taking "
                                  f"{usd(-amount_nano):.9f} would leave it below 0")
    conn.execute("UPDATE api_keys SET balance_nano_usd = ? WHERE id = ?", (new, key_id))
    conn.execute("INSERT INTO credit_grants (id, key_id, amount_nano_usd, created_at, note) VALUES (?, ?, ?, ?, ?)",
                 (secrets.token_hex(8), key_id, amount_nano, format_ts(utc_now()), note))
    return new


def set_unlimited(conn, key_id: str, for_update: str) -> None:
    _key_row(conn, key_id, for_update)
    conn.execute("UPDATE api_keys SET balance_nano_usd = NULL WHERE id = ?", (key_id,))


def set_budget(conn, key_id: str, budget: tuple[int, str] | None, for_update: str) -> None:
    _key_row(conn, key_id, for_update)
    nano, period = budget if budget is not None else (None, None)
    conn.execute("UPDATE api_keys SET budget_nano_usd = ?, budget_period = ? WHERE id = ?", (nano, period, key_id))


def period_spend(conn, key_id: str, start: datetime) -> int:
    """Billed in the ledger since `start` plus held right now, nano-dollars.

    One statement, so one snapshot on PostgreSQL (READ COMMITTED takes one per statement): a hold settled
    between two separate queries would be counted in neither."""
    billed, held = conn.execute(
        "SELECT (SELECT CAST(COALESCE(SUM(cost_nano_usd), 0) AS BIGINT) FROM usage WHERE key_id = ? AND created_at >= ?),"
        " (SELECT CAST(COALESCE(SUM(amount_nano_usd), 0) AS BIGINT) FROM credit_holds WHERE key_id = ?)",
        (key_id, format_ts(start), key_id)).fetchone()
    return int(billed) + int(held)


def hold(conn, key_id: str, request_id: str, amount_nano: int, expires: float, clock: float, for_update: str) -> None:
    """Hold a request's price (see the module doc); raises InsufficientCreditError / BudgetExceededError."""
    if amount_nano < 0:
        raise ValueError(f"a price must be >= 0, got {amount_nano}")
    sweep(conn, clock, key_id)
    balance, budget, period, _ = _key_row(conn, key_id, for_update)  # locks the key: holds of one key queue here
    if budget is not None:
        now = utc_now()
        start, reset = period_bounds(period, now)
        spent = period_spend(conn, key_id, start)
        if spent + amount_nano > budget:
            raise BudgetExceededError(
                f"this request costs {usd(amount_nano):.9f} USD; the key's budget of {usd(budget):.9f} USD per "
                f"{period} has {usd(max(0, budget - spent)):.9f} USD left (it resets at {format_ts(reset)} UTC)",
                retry_after=max(1.0, (reset - now).total_seconds()))
    debited = 0
    if balance is not None:
        cur = conn.execute("UPDATE api_keys SET balance_nano_usd = balance_nano_usd - ? WHERE id = ?"
                           " AND balance_nano_usd >= ?", (amount_nano, key_id, amount_nano))
        if cur.rowcount != 1:
            raise InsufficientCreditError(
                f"insufficient credit: this request costs {usd(amount_nano):.9f} USD and the key has "
                f"{usd(balance):.9f} USD left; ask the operator for more credit (lastrank keys credit)")
        debited = amount_nano
    cur = conn.execute("INSERT INTO credit_holds (request_id, key_id, amount_nano_usd, debited_nano_usd, expires)"
                       " VALUES (?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
                       (request_id, key_id, amount_nano, debited, expires))
    if cur.rowcount != 1:  # request ids are drawn by the server: only a bug gets here (the transaction rolls back)
        raise ValueError(f"credit is already held for request {request_id!r}")


def take_hold(conn, request_id: str, for_update: str) -> tuple[str, int, int] | None:
    """Delete a request's hold; -> (key_id, amount, debited), or None when there is none (expired and given back)."""
    row = conn.execute(f"SELECT key_id, amount_nano_usd, debited_nano_usd FROM credit_holds WHERE request_id = ?"
                       f"{for_update}", (request_id,)).fetchone()
    if row is None:
        return None
    cur = conn.execute("DELETE FROM credit_holds WHERE request_id = ?", (request_id,))
    return (row[0], int(row[1]), int(row[2])) if cur.rowcount == 1 else None


def settle(conn, request_id: str, cost_nano: int, for_update: str) -> bool:
    """The hold becomes the charge `cost_nano` (a lower cost gives the difference back). False: no hold."""
    held = take_hold(conn, request_id, for_update)
    if held is None:
        return False
    key_id, _, debited = held
    if debited:
        if cost_nano > debited:  # the handler charges what it held; more would bypass the balance check
            raise ValueError(f"request {request_id}: a charge of {cost_nano} nano-USD exceeds the {debited} held")
        _refund(conn, key_id, debited - cost_nano)
    return True


def charge_unheld(conn, key_id: str, cost_nano: int) -> None:
    """Charge an answered request that held nothing to its key's balance, if the key has one now (down to 0 at
    most). The API decides whether to hold from its cached key record (--key-cache-s), which can predate a grant
    of credit to a key that was unlimited; without this the requests answered meanwhile were in the ledger but
    never taken from the credit (balance == grants - billed since would not hold). Unlimited keys: no change."""
    if cost_nano:
        conn.execute("UPDATE api_keys SET balance_nano_usd = CASE WHEN balance_nano_usd >= ? THEN balance_nano_usd - ?"
                     " ELSE 0 END WHERE id = ? AND balance_nano_usd IS NOT NULL", (cost_nano, cost_nano, key_id))


def release(conn, request_id: str, for_update: str) -> bool:
    """Give a failed request's hold back. False: there was none (already settled, released or swept)."""
    held = take_hold(conn, request_id, for_update)
    if held is None:
        return False
    _refund(conn, held[0], held[2])
    return True


def sweep(conn, clock: float, key_id: str | None = None) -> int:
    """Give back holds that expired before `clock` (database seconds); all keys' when key_id is None."""
    where, params = "expires < ?", [clock]
    if key_id is not None:
        where += " AND key_id = ?"
        params.append(key_id)
    expired = conn.execute(f"SELECT request_id, key_id, debited_nano_usd FROM credit_holds WHERE {where}",
                           params).fetchall()
    n = 0
    for request_id, kid, debited in expired:
        if conn.execute("DELETE FROM credit_holds WHERE request_id = ?", (request_id,)).rowcount == 1:
            _refund(conn, kid, int(debited))
            n += 1
    if n:
        log.warning("gave back the credit held by %d request(s) that never finished (a server stopped between "
                    "holding and billing them)", n)
    return n


def accounts(conn, key_ids: list[str] | None) -> list[dict]:
    """Per key: balance, granted, held, budget and spend in its current period (USD floats from exact sums)."""
    where = "" if key_ids is None else f" WHERE k.id IN ({', '.join('?' * len(key_ids))})"
    rows = conn.execute(
        "SELECT k.id, k.name, k.balance_nano_usd, k.budget_nano_usd, k.budget_period,"
        " (SELECT CAST(SUM(g.amount_nano_usd) AS BIGINT) FROM credit_grants g WHERE g.key_id = k.id),"
        " (SELECT CAST(SUM(h.amount_nano_usd) AS BIGINT) FROM credit_holds h WHERE h.key_id = k.id),"
        " (SELECT CAST(SUM(u.cost_nano_usd) AS BIGINT) FROM usage u WHERE u.key_id = k.id)"
        f" FROM api_keys k{where} ORDER BY k.created_at, k.id",
        key_ids or [],
    ).fetchall()
    out = []
    now = utc_now()
    for key_id, name, balance, budget, period, granted, held, spent in rows:
        entry = {"key_id": key_id, "key_name": name, "balance_usd": usd(balance), "granted_usd": usd(granted),
                 "held_usd": usd(held or 0), "spent_usd": usd(spent or 0), "budget_usd": usd(budget),
                 "budget_period": period, "period_spent_usd": None, "period_resets_at": None}
        if budget is not None:
            start, reset = period_bounds(period, now)
            entry["period_spent_usd"] = usd(period_spend(conn, key_id, start))
            entry["period_resets_at"] = format_ts(reset)
        out.append(entry)
    return out
