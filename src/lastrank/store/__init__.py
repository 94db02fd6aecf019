"""API keys (hashed) and the durable usage ledger, in one SQLite file. Only `api` and `cli` use this."""

from lastrank.store.db import SCHEMA_VERSION, Store, StoreError, default_db_path
from lastrank.store.keys import KeyRecord
from lastrank.store.ledger import DEFAULT_PRICE_PER_1K_DOCS, UsageRow, cost_for

__all__ = [
    "DEFAULT_PRICE_PER_1K_DOCS",
    "KeyRecord",
    "SCHEMA_VERSION",
    "Store",
    "StoreError",
    "UsageRow",
    "cost_for",
    "default_db_path",
]
