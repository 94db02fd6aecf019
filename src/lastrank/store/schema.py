"""The store's schema: one list of migrations, rendered for SQLite and for PostgreSQL.

Each migration is written once, in the SQL both databases share, with three column types left as
placeholders because the two spell them differently for the same meaning:

    {int}    a 64-bit integer     SQLite INTEGER (always 64-bit)    PostgreSQL BIGINT (INTEGER is 32-bit)
    {float}  a 64-bit float       SQLite REAL (always 64-bit)       PostgreSQL DOUBLE PRECISION (REAL is 32-bit)
    {bytes}  raw bytes            SQLite BLOB                       PostgreSQL BYTEA

Migration N (1-based) takes the schema from version N-1 to N. Append only; never edit a released one
(the SQLite rendering of migration 1 is, byte for byte in meaning, the schema lastrank 0.1 created).
Where the version number lives differs (SQLite: `PRAGMA user_version`; PostgreSQL: the one-row table
`lastrank_schema`), and so does how concurrent migrators are kept apart; see db.py and postgres.py.

Timestamps are fixed-width UTC ISO 8601 text in both (`2026-11-27T09:30:01.123456Z`), so text order is
time order and a day is the first 10 characters, with the same SQL in both databases.
"""

from __future__ import annotations

TYPES: dict[str, dict[str, str]] = {
    "sqlite": {"int": "INTEGER", "float": "REAL", "bytes": "BLOB"},
    "postgresql": {"int": "BIGINT", "float": "DOUBLE PRECISION", "bytes": "BYTEA"},
}

MIGRATIONS: list[str] = [
    # 1: keys and the usage ledger
    """
    CREATE TABLE api_keys (
        id                   TEXT PRIMARY KEY,   -- public id, part of the plaintext key
        name                 TEXT NOT NULL,
        secret_hash          {bytes} NOT NULL,   -- sha256 of the plaintext key; the key itself is never stored
        created_at           TEXT NOT NULL,      -- UTC, ISO 8601
        revoked_at           TEXT,
        requests_per_minute  {int},
        documents_per_minute {int}
    );
    -- a name may be reused once the key that held it is revoked
    CREATE UNIQUE INDEX api_keys_active_name ON api_keys(name) WHERE revoked_at IS NULL;

    CREATE TABLE usage (
        request_id    TEXT PRIMARY KEY,          -- unique: a retried insert never bills twice
        key_id        TEXT,                      -- NULL when the server runs without keys
        model         TEXT NOT NULL,
        route         TEXT NOT NULL,
        dialect       TEXT NOT NULL,
        documents     {int} NOT NULL,
        prompt_tokens {int} NOT NULL,
        blocks        {int} NOT NULL,
        status        {int} NOT NULL,
        latency_ms    {float} NOT NULL,
        cost_nano_usd {int} NOT NULL,            -- integer nano-dollars so sums are exact
        created_at    TEXT NOT NULL              -- UTC, ISO 8601 with a fixed width: sorts as text
    );
    CREATE INDEX usage_created ON usage(created_at);
    CREATE INDEX usage_key_created ON usage(key_id, created_at);
    """,
    # 2: refused requests (counted, never billed) and the rate-limit buckets shared by every server process
    """
    CREATE TABLE refusals (
        day     TEXT NOT NULL,                   -- UTC day, YYYY-MM-DD
        key_id  TEXT NOT NULL,                   -- '' when the request had no valid key (e.g. a 401)
        route   TEXT NOT NULL,
        status  {int} NOT NULL,                  -- the HTTP status sent (4xx, 5xx)
        model   TEXT NOT NULL,
        count   {int} NOT NULL,                  -- one row per combination: a flood of 401s stays one row a day
        PRIMARY KEY (day, key_id, route, status, model)
    );

    CREATE TABLE rate_buckets (
        key_id   TEXT NOT NULL,
        kind     TEXT NOT NULL,                  -- 'requests' or 'documents'
        capacity {float} NOT NULL,               -- the per-minute limit the bucket was filled for
        tokens   {float} NOT NULL,
        updated  {float} NOT NULL,               -- seconds since the epoch, by the database's clock
        PRIMARY KEY (key_id, kind)
    );
    """,
    # 3: a key may be limited to some served models
    """
    ALTER TABLE api_keys ADD COLUMN models TEXT;  -- comma-separated served model names; NULL: every model
    """,
    # 4: which provider answered a routed model's request (lastrank/router)
    """
    ALTER TABLE usage ADD COLUMN provider TEXT;  -- the router's provider that answered; NULL: a local model
    """,
    # 5: credit, budgets and held credit (store/credit.py, docs/billing.md); what the answering provider cost
    """
    ALTER TABLE api_keys ADD COLUMN balance_nano_usd {int};   -- credit left, nano-USD; NULL: unlimited
    ALTER TABLE api_keys ADD COLUMN budget_nano_usd {int};    -- spend allowed per budget period; NULL: no budget
    ALTER TABLE api_keys ADD COLUMN budget_period TEXT;       -- 'day' or 'month' (UTC); NULL with no budget
    ALTER TABLE usage ADD COLUMN upstream_cost_nano_usd {int};  -- what the provider that answered costs; NULL: unknown

    CREATE TABLE credit_grants (
        id              TEXT PRIMARY KEY,
        key_id          TEXT NOT NULL,
        amount_nano_usd {int} NOT NULL,          -- a grant or top-up (> 0) or an adjustment (< 0)
        created_at      TEXT NOT NULL,
        note            TEXT
    );
    CREATE INDEX credit_grants_key ON credit_grants(key_id, created_at);

    -- credit held for a request between the check (before model work) and its ledger row
    CREATE TABLE credit_holds (
        request_id      TEXT PRIMARY KEY,
        key_id          TEXT NOT NULL,
        amount_nano_usd {int} NOT NULL,          -- the request's price: counts toward the key's budget
        debited_nano_usd {int} NOT NULL,         -- taken from the balance (0 for a key without credit)
        expires         {float} NOT NULL         -- seconds since the epoch, database clock: swept back after
    );
    CREATE INDEX credit_holds_key ON credit_holds(key_id, expires);
    """,
]


def schema_version() -> int:
    return len(MIGRATIONS)


def render(migration: str, dialect: str) -> list[str]:
    """The statements of one migration for `dialect` ("sqlite" or "postgresql").

    Split here rather than run as a script: SQLite's `executescript` commits any open transaction first,
    and a migration must be atomic with its version bump. (Our migrations hold no semicolon inside a
    literal or a trigger, and `--` only starts comments.)
    """
    lines = [line.split("--", 1)[0] for line in migration.splitlines()]
    text = "\n".join(lines).format(**TYPES[dialect])
    return [s.strip() for s in text.split(";") if s.strip()]
