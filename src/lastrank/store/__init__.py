"""API keys (hashed), the durable usage ledger, refusal counts and shared rate-limit buckets, in one SQLite
file (`Store`, the default) or one PostgreSQL database (`PostgresStore`, for several server processes or
machines). Both run the same code (base.py) over the same schema (schema.py). Only `api` and `cli` use this.
"""

from __future__ import annotations

from pathlib import Path

from lastrank.store.base import BaseStore, StoreError
from lastrank.store.db import SCHEMA_VERSION, Store, default_db_path
from lastrank.store.keys import KeyRecord
from lastrank.store.ledger import DEFAULT_PRICE_PER_1K_DOCS, UsageRow, cost_for
from lastrank.store.postgres import PostgresStore, is_postgres_url


def open_store(target: str | Path | None = None) -> BaseStore:
    """`postgresql://...` (or `postgres://...`): a PostgresStore; a path: the SQLite Store in that file;
    None: the SQLite Store at default_db_path()."""
    if is_postgres_url(target):
        return PostgresStore(str(target))
    return Store(target)


__all__ = [
    "DEFAULT_PRICE_PER_1K_DOCS",
    "BaseStore",
    "KeyRecord",
    "PostgresStore",
    "SCHEMA_VERSION",
    "Store",
    "StoreError",
    "UsageRow",
    "cost_for",
    "default_db_path",
    "is_postgres_url",
    "open_store",
]
