"""API keys: creation, hashed verification, revocation. Functions take an open connection of either
backend (anything with `execute(sql, params)` and `?` placeholders: see base.py); the store wraps them
in transactions.

A key reads `lr-<id>-<secret>`: `id` is 12 hex characters, public, and finds the row; `secret` is 32
random bytes in urlsafe base64. Only sha256 of the whole key is stored. A slow password hash (bcrypt,
scrypt) guards low-entropy human passwords against guessing; a 256-bit random secret cannot be guessed,
so one sha256 is as safe and keeps the check on every request cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from lastrank.errors import InvalidRequestError, NotFoundError
from lastrank.store.ledger import format_ts, parse_ts, utc_now

KEY_PREFIX = "lr"
ID_HEX_CHARS = 12
SECRET_BYTES = 32
_SECRET_CHARS = 43  # len(secrets.token_urlsafe(32)): base64 without padding
_ID_RE = re.compile(rf"[0-9a-f]{{{ID_HEX_CHARS}}}")
_DISPLAY_RE = re.compile(rf"{KEY_PREFIX}-([0-9a-f]{{{ID_HEX_CHARS}}})")
_KEY_RE = re.compile(rf"{KEY_PREFIX}-([0-9a-f]{{{ID_HEX_CHARS}}})-([A-Za-z0-9_-]{{{_SECRET_CHARS}}})")
MAX_NAME_CHARS = 64


@dataclass(frozen=True)
class KeyRecord:
    """What the store knows about a key. Holds no secret: safe to log and to print."""

    id: str
    name: str
    prefix: str  # "lr-<id>": the start of the plaintext key, for humans to recognise it
    created_at: datetime  # UTC
    revoked_at: datetime | None
    requests_per_minute: int | None  # None: no limit
    documents_per_minute: int | None
    models: tuple[str, ...] | None = None  # served model names this key may use; None: every model
    # money (store/credit.py), nano-dollars as read: the balance moves with every request, so this is a snapshot
    balance_nano_usd: int | None = None  # credit left; None: unlimited
    budget_nano_usd: int | None = None  # spend allowed per budget_period; None: no budget
    budget_period: str | None = None  # "day" or "month" (UTC)

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def billed_with_credit(self) -> bool:
        """True when a request must hold its price first (the key has credit or a budget); False: unlimited.
        Fixed when the key is created or changed by `lastrank keys`, so a cached record answers it."""
        return self.balance_nano_usd is not None or self.budget_nano_usd is not None

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "created_at": format_ts(self.created_at),
            "revoked_at": None if self.revoked_at is None else format_ts(self.revoked_at),
            "active": self.active,
            "requests_per_minute": self.requests_per_minute,
            "documents_per_minute": self.documents_per_minute,
            "models": None if self.models is None else list(self.models),
            "balance_usd": None if self.balance_nano_usd is None else self.balance_nano_usd / 1e9,
            "budget_usd": None if self.budget_nano_usd is None else self.budget_nano_usd / 1e9,
            "budget_period": self.budget_period,
        }


def _hash(plaintext: str) -> bytes:
    return hashlib.sha256(plaintext.encode("ascii")).digest()


def check_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidRequestError(f"a key name must be a string, got {type(name).__name__}")
    name = name.strip()
    if not name:
        raise InvalidRequestError("a key name must not be empty")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidRequestError(f"a key name has at most {MAX_NAME_CHARS} characters, got {len(name)}")
    if not name.isprintable():
        raise InvalidRequestError(f"a key name must not contain control characters: {name!r}")
    # `revoke`/`usage --key` accept an id or a name; a name shaped like an id would be ambiguous
    if _ID_RE.fullmatch(name) or _DISPLAY_RE.fullmatch(name) or name.startswith(f"{KEY_PREFIX}-"):
        raise InvalidRequestError(f"a key name must not look like a key id: {name!r}")
    return name


def check_limit(what: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{what} must be a positive integer or None, got {value!r}")
    if value < 1:
        raise InvalidRequestError(f"{what} must be at least 1 (revoke a key to block it), got {value}")
    return value


_COLUMNS = ("id, name, created_at, revoked_at, requests_per_minute, documents_per_minute, models, balance_nano_usd,"
            " budget_nano_usd, budget_period")


def check_models(models) -> tuple[str, ...] | None:
    """None (every model) or a non-empty tuple of served model names (no commas: stored comma-separated)."""
    if models is None:
        return None
    if isinstance(models, str):
        models = [models]
    names = tuple(dict.fromkeys(m.strip() for m in models if isinstance(m, str) and m.strip()))
    if not names or any("," in n for n in names):
        raise InvalidRequestError(f"models must be served model names without commas, got {models!r}")
    return names


def _record(row: tuple) -> KeyRecord:
    key_id, name, created_at, revoked_at, rpm, dpm, models, balance, budget, period = row
    return KeyRecord(
        id=key_id,
        name=name,
        prefix=f"{KEY_PREFIX}-{key_id}",
        created_at=parse_ts(created_at),
        revoked_at=None if revoked_at is None else parse_ts(revoked_at),
        requests_per_minute=rpm,
        documents_per_minute=dpm,
        models=None if models is None else tuple(models.split(",")),
        balance_nano_usd=None if balance is None else int(balance),
        budget_nano_usd=None if budget is None else int(budget),
        budget_period=period,
    )


def create_key(conn, name: str, rpm: int | None, dpm: int | None,
               models: tuple[str, ...] | None = None) -> tuple[KeyRecord, str]:
    """Insert a key; the caller holds a write transaction that keeps other key writers out (so the name
    check cannot race)."""
    if conn.execute("SELECT 1 FROM api_keys WHERE name = ? AND revoked_at IS NULL", (name,)).fetchone():
        raise InvalidRequestError(f"an active key named {name!r} already exists (revoke it first or pick another name)")
    created_at = format_ts(utc_now())
    while True:
        key_id = secrets.token_hex(ID_HEX_CHARS // 2)
        plaintext = f"{KEY_PREFIX}-{key_id}-{secrets.token_urlsafe(SECRET_BYTES)}"
        # ON CONFLICT, not catching the integrity error: in PostgreSQL an error aborts the transaction
        cur = conn.execute(
            "INSERT INTO api_keys (id, name, secret_hash, created_at, revoked_at, requests_per_minute,"
            " documents_per_minute, models) VALUES (?, ?, ?, ?, NULL, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (key_id, name, _hash(plaintext), created_at, rpm, dpm, None if models is None else ",".join(models)),
        )
        if cur.rowcount != 1:
            continue  # 48-bit id collision: astronomically rare, draw another
        row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return _record(row), plaintext


def verify_key(conn, plaintext: object) -> KeyRecord | None:
    if not isinstance(plaintext, str):
        return None
    match = _KEY_RE.fullmatch(plaintext.strip())
    if match is None:
        return None
    row = conn.execute(f"SELECT {_COLUMNS}, secret_hash FROM api_keys WHERE id = ?", (match.group(1),)).fetchone()
    if row is None:
        return None  # the id is public, so answering faster here leaks nothing
    if not hmac.compare_digest(_hash(match.group(0)), bytes(row[-1])):
        return None
    record = _record(row[:-1])
    return record if record.active else None


def _by_id(conn, ident: str) -> KeyRecord | None:
    match = _DISPLAY_RE.fullmatch(ident)
    key_id = match.group(1) if match else ident
    if not _ID_RE.fullmatch(key_id):
        return None
    row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
    return None if row is None else _record(row)


def get_key(conn, id_or_name: str) -> KeyRecord:
    if not isinstance(id_or_name, str) or not id_or_name.strip():
        raise InvalidRequestError("give a key id or name")
    ident = id_or_name.strip()
    record = _by_id(conn, ident)
    if record is not None:
        return record
    row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE name = ? AND revoked_at IS NULL", (ident,)).fetchone()
    if row is None:
        raise NotFoundError(f"no key with id {ident!r} and no active key named {ident!r}")
    return _record(row)


def list_keys(conn, include_revoked: bool = True) -> list[KeyRecord]:
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY created_at, id").fetchall()
    return [_record(r) for r in rows]


def revoke_key(conn, id_or_name: str) -> KeyRecord:
    """Revoke; the caller holds a write transaction."""
    record = get_key(conn, id_or_name)
    if record.active:
        conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (format_ts(utc_now()), record.id))
        record = _by_id(conn, record.id)
    return record


def revocation_count(conn) -> int:
    """Keys revoked so far: it only grows (no key is un-revoked or deleted), so a change means a revocation."""
    return conn.execute("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NOT NULL").fetchone()[0]


def has_active_keys(conn) -> bool:
    return conn.execute("SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1").fetchone() is not None


def resolve_ids_for_usage(conn, key: str) -> list[str]:
    """Key ids for a usage query: an id or prefix gives that key; a name gives every key that ever had it."""
    if not isinstance(key, str) or not key.strip():
        raise InvalidRequestError("give a key id or name")
    ident = key.strip()
    record = _by_id(conn, ident)
    if record is not None:
        return [record.id]
    ids = [r[0] for r in conn.execute("SELECT id FROM api_keys WHERE name = ? ORDER BY created_at", (ident,))]
    if not ids:
        raise NotFoundError(f"no key with id or name {ident!r}")
    return ids
