"""`BaseStore`: everything the store does, written once over two backends.

A backend (db.py: SQLite, postgres.py: PostgreSQL) supplies connections and transactions:

    _read()                          context manager -> a connection for reads (autocommit)
    _write(durable=True, lock=None)  context manager -> a connection inside a write transaction,
                                     committed on exit, durable when it returns if `durable`;
                                     `lock="api_keys"` keeps every other key writer out until then
    _clock(conn)                     seconds since the epoch, for the rate-limit buckets
    _for_update                      the row-locking clause (" FOR UPDATE", or "" where the
                                     transaction already excludes other writers)
    location                         where the data lives, for messages (never a password)
    check_available()                raises StoreUnavailableError while the store cannot be used (/ready)

A database that cannot be reached or written just now raises StoreUnavailableError (the API: 503 with
Retry-After); StoreError is for what retrying will not fix (a schema too new, a closed store).

A connection is anything with `execute(sql, params)` returning a cursor (`fetchone`, `fetchall`,
iteration, `rowcount`) that takes `?` placeholders: sqlite3's own, or postgres.py's thin adapter. The SQL
in keys.py, ledger.py, refusals.py and ratelimit.py is the subset both databases run unchanged.
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager
from datetime import date, datetime

from lastrank.errors import InsufficientCreditError, InvalidRequestError, StoreError, StoreUnavailableError
from lastrank.store import credit as _credit
from lastrank.store import keys as _keys
from lastrank.store import ledger as _ledger
from lastrank.store import ratelimit as _rate
from lastrank.store import refusals as _refusals
from lastrank.store.keys import KeyRecord
from lastrank.store.ledger import UsageRow


log = logging.getLogger("lastrank.store")

# At most this many ledger rows of failed requests wait to be deleted (see record_usage); the oldest go first.
MAX_VOIDS = 100_000
HOLD = "hold"  # a _voids entry that is a credit hold to give back, not a ledger row to delete

__all__ = ["BaseStore", "StoreError", "StoreUnavailableError"]


class BaseStore:
    #: True where several server processes share this store, so rate limits should be counted here
    #: (PostgreSQL) rather than in each process's memory (SQLite: one machine, one server process).
    shared_rate_limits = False

    _for_update = ""

    def __init__(self) -> None:
        self._recorder: _refusals.RefusalRecorder | None = None
        self._recorder_lock = threading.Lock()
        self._recording = True  # False once close() began: a late refusal is dropped, not written
        # Revocations through this object: the API's key cache compares it on every request (free), so a
        # revocation in this process takes effect on the next request (api/auth.py).
        self.revocations_here = 0
        # request ids whose ledger insert (value: whether it settled a hold) or credit hold (value: HOLD) may have
        # committed although the caller was told it failed
        self._voids: dict[str, bool | str] = {}
        self._voids_lock = threading.Lock()

    # ---- provided by the backend -----------------------------------------------------------------

    location: str

    def _read(self) -> AbstractContextManager:
        raise NotImplementedError

    def _write(self, *, durable: bool = True, lock: str | None = None) -> AbstractContextManager:
        raise NotImplementedError

    def _clock(self, conn) -> float:
        raise NotImplementedError

    def schema_version(self) -> int:
        raise NotImplementedError

    def _close_connections(self) -> None:
        raise NotImplementedError

    def check_available(self) -> None:
        """Raises StoreUnavailableError while the store cannot be reached (for /ready); cheap otherwise."""
        with self._read() as conn:
            conn.execute("SELECT 1").fetchone()
        self._settle_voids()

    # ---- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Write pending refusal counts, then close every connection. The store cannot be used afterwards."""
        with self._recorder_lock:
            recorder, self._recorder = self._recorder, None
            self._recording = False
        try:
            if recorder is not None:
                recorder.close()
        except Exception:  # counts of unbilled requests: worth a log line, not a failed shutdown
            _refusals.log.exception("could not write the last refused-request counts")
        finally:
            self._close_connections()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- keys ------------------------------------------------------------------------------------

    def create_key(
        self, name: str, requests_per_minute: int | None = None, documents_per_minute: int | None = None,
        models: list[str] | tuple[str, ...] | None = None, *, credit_usd=None, budget: str | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key. Returns its record and the plaintext, which is not stored and cannot be shown again.
        models: the served model names it may use (None: every model). credit_usd: a first grant of credit
        (None: unlimited); budget: e.g. "1.00/day" or "20/month" (None: none). See store/credit.py."""
        name = _keys.check_name(name)
        rpm = _keys.check_limit("requests_per_minute", requests_per_minute)
        dpm = _keys.check_limit("documents_per_minute", documents_per_minute)
        models = _keys.check_models(models)
        credit = None if credit_usd is None else _credit.to_nano(credit_usd, "credit")
        if credit is not None and credit < 0:
            raise InvalidRequestError(f"credit must be >= 0 USD, got {credit_usd!r}")
        spend = None if budget is None else _credit.parse_budget(budget)
        with self._write(lock="api_keys") as conn:
            record, plaintext = _keys.create_key(conn, name, rpm, dpm, models)
            if credit is not None:
                _credit.grant(conn, record.id, credit, "created", self._for_update)
            if spend is not None:
                _credit.set_budget(conn, record.id, spend, self._for_update)
            if credit is not None or spend is not None:
                record = _keys.get_key(conn, record.id)
            return record, plaintext

    # ---- credit and budgets (store/credit.py) ----------------------------------------------------

    def grant_credit(self, id_or_name: str, amount_usd, note: str | None = None) -> KeyRecord:
        """Add credit to a key (negative: an adjustment; the balance never goes below 0). A key without credit
        (unlimited) starts from 0, so its requests are then paid from this credit."""
        amount = _credit.to_nano(amount_usd, "the amount")
        if amount == 0:
            raise InvalidRequestError("the amount must not be 0")
        with self._write(lock="api_keys") as conn:
            key_id = _keys.get_key(conn, id_or_name).id
            _credit.grant(conn, key_id, amount, note, self._for_update)
            return _keys.get_key(conn, key_id)

    def set_unlimited(self, id_or_name: str) -> KeyRecord:
        """Remove a key's credit limit (its balance is forgotten; the grants stay on record)."""
        with self._write(lock="api_keys") as conn:
            key_id = _keys.get_key(conn, id_or_name).id
            _credit.set_unlimited(conn, key_id, self._for_update)
            return _keys.get_key(conn, key_id)

    def set_budget(self, id_or_name: str, budget: str | None) -> KeyRecord:
        """Set ("1.00/day", "20/month") or remove (None) a key's spend budget."""
        spend = None if budget is None else _credit.parse_budget(budget)
        with self._write(lock="api_keys") as conn:
            key_id = _keys.get_key(conn, id_or_name).id
            _credit.set_budget(conn, key_id, spend, self._for_update)
            return _keys.get_key(conn, key_id)

    def hold_credit(self, key_id: str, request_id: str, amount_nano_usd: int, hold_s: float) -> None:
        """Before model work: hold the request's price, or raise InsufficientCreditError / BudgetExceededError
        (a 402). The hold expires `hold_s` seconds from now (database clock) unless settled or released."""
        self._settle_voids()
        try:
            with self._write() as conn:
                clock = self._clock(conn)
                _credit.hold(conn, key_id, request_id, amount_nano_usd, clock + hold_s, clock, self._for_update)
        except StoreUnavailableError as e:
            if getattr(e, "may_have_committed", False):
                # The hold may be on disk, yet the request is answered an error and runs nothing: give it back
                # once the store answers again (_settle_voids), not only when it expires.
                self._add_void(request_id, HOLD)
            raise

    def release_credit(self, request_id: str) -> bool:
        """A held request failed: give its credit back. False: no hold (settled, released or swept already)."""
        with self._write() as conn:
            return _credit.release(conn, request_id, self._for_update)

    def sweep_credit_holds(self) -> int:
        """Give back every expired hold (a server stopped between hold and bill); a server runs it at start."""
        with self._write() as conn:
            return _credit.sweep(conn, self._clock(conn))

    def credit_accounts(self, key: str | None = None) -> list[dict]:
        """Per key: balance, granted, held, spent, budget and spend in its current period (store/credit.py)."""
        with self._read() as conn:
            return _credit.accounts(conn, _key_ids(conn, key))

    def verify_key(self, plaintext: str) -> KeyRecord | None:
        """The active key this plaintext belongs to; None for unknown, malformed or revoked keys."""
        with self._read() as conn:
            return _keys.verify_key(conn, plaintext)

    def get_key(self, id_or_name: str) -> KeyRecord:
        """A key by id, displayed prefix, or active name (raises NotFoundError)."""
        with self._read() as conn:
            return _keys.get_key(conn, id_or_name)

    def list_keys(self, include_revoked: bool = True) -> list[KeyRecord]:
        with self._read() as conn:
            return _keys.list_keys(conn, include_revoked)

    def revoke_key(self, id_or_name: str) -> KeyRecord:
        """Revoke by id, displayed prefix or active name; revoking a revoked key (by id) changes nothing."""
        with self._write(lock="api_keys") as conn:
            record = _keys.revoke_key(conn, id_or_name)
        self.revocations_here += 1
        return record

    def revocation_count(self) -> int:
        """How many keys were ever revoked (it only grows: a key is never un-revoked nor deleted). The API
        reads it at most every fraction of a second to drop its cache of verified keys when it changes, so
        a revocation by another process takes effect within that time (api/auth.py)."""
        with self._read() as conn:
            return _keys.revocation_count(conn)

    def has_active_keys(self) -> bool:
        with self._read() as conn:
            return _keys.has_active_keys(conn)

    # ---- ledger ----------------------------------------------------------------------------------

    def record_usage(self, row: UsageRow, *, held: bool = False) -> bool:
        """Write one ledger row; committed and durable when this returns.

        Returns False (and writes nothing) when a row with this request_id already exists, whichever
        process or machine wrote it. Raises StoreUnavailableError when the row could not be written; then
        it is not billed (a row whose COMMIT outcome is unknown is deleted later).

        held: the request's price was held (hold_credit); in the same transaction the hold becomes the charge
        (row.cost_usd, at most what was held). If the hold is gone (it expired and was given back) nothing is
        written and InsufficientCreditError is raised: the request is answered with an error, not billed.
        """
        if not isinstance(row, UsageRow):
            raise TypeError(f"record_usage takes a UsageRow, got {type(row).__name__}")
        self._settle_voids()
        try:
            with self._write() as conn:
                if held:
                    cost = round(row.cost_usd * _credit.NANO)
                    if not _credit.settle(conn, row.request_id, cost, self._for_update):
                        raise InsufficientCreditError(
                            "the credit held for this request expired before it was answered; it was not billed")
                    inserted = _ledger.insert(conn, row)
                    if not inserted and row.key_id is not None:  # billed already: the new charge goes back
                        conn.execute("UPDATE api_keys SET balance_nano_usd = balance_nano_usd + ? WHERE id = ?"
                                     " AND balance_nano_usd IS NOT NULL", (cost, row.key_id))
                    return inserted
                inserted = _ledger.insert(conn, row)
                if inserted and row.key_id is not None:  # a key granted credit after the API cached it unlimited
                    _credit.charge_unheld(conn, row.key_id, round(row.cost_usd * _credit.NANO))
                return inserted
        except StoreUnavailableError as e:
            if getattr(e, "may_have_committed", False):
                # The connection broke during COMMIT (e.g. the database server stopped at that moment): the row
                # may be on disk, yet the caller answers an error. A request is billed only when its answer
                # is a success, so the row is deleted once the store answers again (_settle_voids), and a
                # held request's charge goes back to its key's balance with it.
                self._add_void(row.request_id, held)
            raise

    def _add_void(self, request_id: str, kind) -> None:
        with self._voids_lock:
            self._voids[request_id] = kind
            while len(self._voids) > MAX_VOIDS:
                del self._voids[next(iter(self._voids))]

    def _settle_voids(self) -> None:
        """Delete the ledger rows of requests whose insert failed with an unknown outcome (record_usage), and give
        back the credit holds whose write did (hold_credit).
        Raises StoreUnavailableError if the store still cannot be written; they are kept for the next try."""
        if not self._voids:  # the common case: no lock, no query
            return
        with self._voids_lock:
            ids = list(self._voids)
        with self._write() as conn:
            for request_id in ids:
                kind = self._voids.get(request_id)
                if kind == HOLD:  # a hold whose COMMIT outcome was unknown (hold_credit): its credit goes back
                    _credit.release(conn, request_id, self._for_update)
                    continue
                if kind:  # held: a committed charge goes back with its row
                    found = conn.execute("SELECT key_id, cost_nano_usd FROM usage WHERE request_id = ?",
                                         (request_id,)).fetchone()
                    if found is not None and found[0] is not None:
                        conn.execute("UPDATE api_keys SET balance_nano_usd = balance_nano_usd + ? WHERE id = ?"
                                     " AND balance_nano_usd IS NOT NULL", (int(found[1]), found[0]))
                _ledger.delete(conn, request_id)
        with self._voids_lock:
            for request_id in ids:
                self._voids.pop(request_id, None)
        log.warning("deleted the ledger rows or gave back the credit holds (if any) of %d request(s) whose write "
                    "failed with an unknown outcome and that were answered with an error", len(ids))

    def get_usage(self, request_id: str) -> UsageRow | None:
        with self._read() as conn:
            return _ledger.get(conn, request_id)

    def list_usage(
        self, key: str | None = None, since: date | datetime | str | None = None, limit: int | None = None
    ) -> list[UsageRow]:
        """Ledger rows, oldest first, optionally for one key (id, prefix or name) and from a day on."""
        bound = _ledger.since_bound(since)
        with self._read() as conn:
            return _ledger.list_rows(conn, _key_ids(conn, key), bound, limit)

    def count_usage(self, key: str | None = None, since: date | datetime | str | None = None) -> int:
        bound = _ledger.since_bound(since)
        with self._read() as conn:
            return _ledger.count(conn, _key_ids(conn, key), bound)

    def usage_summary(self, key: str | None = None, since: date | datetime | str | None = None) -> list[dict]:
        """Totals per key and UTC day, ordered by day, then the keyless rows, then key id.

        `key` is a key id, displayed prefix, or name (a name covers every key that ever had it, so a rotated
        key's history stays together). `since` is a date, a "YYYY-MM-DD" string (UTC day, inclusive), or
        an aware datetime (refusals are counted per day, so from that day on). Each dict: day, key_id,
        key_name, requests (ledger rows + refusals), errors (ledger rows with status >= 400 + refusals:
        requests that were not billed), documents, prompt_tokens, blocks, cost_usd.
        """
        bound = _ledger.since_bound(since)
        with self._read() as conn:
            ids = _key_ids(conn, key)
            rows = {(r["day"], r["key_id"]): r for r in _ledger.summary(conn, ids, bound)}
            for day, key_id, name, n in _refusals.per_key_and_day(conn, ids, bound):
                r = rows.setdefault((day, key_id), {
                    "day": day, "key_id": key_id, "key_name": name, "requests": 0, "errors": 0, "documents": 0,
                    "prompt_tokens": 0, "blocks": 0, "cost_usd": 0.0,
                })
                r["requests"] += n
                r["errors"] += n
        return [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[1] is not None, k[1] or ""))]

    # ---- refusals (counted, never billed) ----------------------------------------------------------

    def record_refusal(self, key_id: str | None, route: str, status: int, model: str) -> None:
        """Count one refused request (4xx/5xx, not billed). Never blocks on the database and never raises
        (the API calls it while answering); a background thread writes the counts."""
        try:
            with self._recorder_lock:
                if not self._recording:
                    _refusals.log.warning("a refused request after the store was closed was not counted")
                    return
                if self._recorder is None:
                    self._recorder = _refusals.RefusalRecorder(self)
                recorder = self._recorder
            recorder.record(key_id, route, status, model)
        except Exception:
            _refusals.log.exception("could not count a refused request")

    def flush_refusals(self) -> None:
        """Write the refusals recorded so far (e.g. before reading them back)."""
        with self._recorder_lock:
            recorder = self._recorder
        if recorder is not None:
            recorder.flush()

    def record_refusals(self, counts: dict[tuple[str, str, str, int, str], int]) -> None:
        """Add counts keyed (day, key_id or '', route, status, model) in one transaction."""
        if counts:
            with self._write(durable=False) as conn:
                _refusals.add(conn, counts)

    def list_refusals(self, key: str | None = None, since: date | datetime | str | None = None) -> list[dict]:
        """The refusal counters (written ones: see flush_refusals), one dict per day/key/route/status/model."""
        bound = _ledger.since_bound(since)
        with self._read() as conn:
            return _refusals.list_rows(conn, _key_ids(conn, key), bound)

    # ---- rate limits shared through the store ----------------------------------------------------

    def take_rate_limit(
        self, key_id: str, *, requests_per_minute: int | None, documents_per_minute: int | None, documents: int
    ) -> tuple[float, str] | None:
        """Take 1 request and `documents` documents from the key's buckets, or nothing.

        Returns None when taken, else (seconds until it would pass, "requests" or "documents": the bucket
        that is short longest). A limit of None is no bucket.
        """
        wants = []
        if requests_per_minute is not None:
            wants.append(_rate.Want("requests", requests_per_minute, 1))
        if documents_per_minute is not None:
            wants.append(_rate.Want("documents", documents_per_minute, documents))
        if not wants:
            return None
        with self._write(durable=False) as conn:
            short = _rate.take(conn, key_id, wants, self._clock(conn), for_update=self._for_update)
        return None if short is None else (short[0], short[1].kind)


def _key_ids(conn, key: str | None) -> list[str] | None:
    return None if key is None else _keys.resolve_ids_for_usage(conn, key)
