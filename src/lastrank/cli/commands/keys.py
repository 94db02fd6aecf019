"""`lastrank keys create|list|revoke|credit|budget` (parser: cli/keys.py), and the store the `--store` / `--db`
flags name, which `usage` and `serve` open too."""

from __future__ import annotations

import argparse
import json
import sys

from lastrank.api.settings import store_target as resolve_store_target
from lastrank.store import open_store as open_target


def store_target(args: argparse.Namespace) -> str | None:
    """--store, else --db, else $LASTRANK_STORE, else $LASTRANK_DB (api/settings.py); None: default."""
    return resolve_store_target(args.store, args.db)


def open_store(args: argparse.Namespace):
    """The store named by the arguments or the environment (see store_target): SQLite or PostgreSQL."""
    return open_target(store_target(args))


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


def create(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        models = None if args.models is None else args.models.split(",")
        record, plaintext = store.create_key(args.name, args.requests_per_minute, args.documents_per_minute, models,
                                             credit_usd=args.credit, budget=args.budget)
        where = store.location
    # The key alone goes to stdout (so `lastrank keys create ... > file` captures just it); the rest to stderr.
    print(f"Created key {record.name!r} (id {record.id}) in {where}", file=sys.stderr)
    print(plaintext)
    print("Save this key now: it will not be shown again (only its hash is stored).", file=sys.stderr)
    return 0


def format_table(headers: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in rows])


def list_keys(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        records = store.list_keys()
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
        return 0
    if not records:
        print("No keys. Create one with: lastrank keys create --name NAME")
        return 0
    rows = [
        [
            r.id,
            r.name,
            r.prefix + "-...",
            r.created_at.strftime("%Y-%m-%d %H:%M"),
            "active" if r.active else "revoked " + r.revoked_at.strftime("%Y-%m-%d %H:%M"),
            _limit(r.requests_per_minute),
            _limit(r.documents_per_minute),
            "all" if r.models is None else ",".join(r.models),
            "unlimited" if r.balance_nano_usd is None else usd(r.balance_nano_usd),
            "-" if r.budget_nano_usd is None else f"{usd(r.budget_nano_usd)}/{r.budget_period}",
        ]
        for r in records
    ]
    print(format_table(["ID", "NAME", "KEY", "CREATED (UTC)", "STATUS", "REQ/MIN", "DOCS/MIN", "MODELS",
                        "CREDIT (USD)", "BUDGET (USD)"], rows, right={5, 6, 8}))
    return 0


def revoke(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        before = store.get_key(args.key)
        record = store.revoke_key(before.id)
    if before.active:
        print(f"Revoked key {record.name!r} (id {record.id}).")
    else:
        print(f"Key {record.name!r} (id {record.id}) was already revoked.")
    return 0


def usd(nano: int) -> str:
    """Exact USD from nano-dollars: at least 2 decimals, more only where the amount has them."""
    sign = "-" if nano < 0 else ""
    whole, frac = divmod(abs(nano), 1_000_000_000)
    digits = f"{frac:09d}".rstrip("0")
    return f"{sign}{whole}.{digits.ljust(2, '0')}"


def credit(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        if args.unlimited:
            record = store.set_unlimited(args.key)
            print(f"Key {record.name!r} (id {record.id}) has no credit limit now.")
            return 0
        record = store.grant_credit(args.key, args.add, note=args.note)
    print(f"Key {record.name!r} (id {record.id}): credit {usd(record.balance_nano_usd)} USD.")
    return 0


def budget(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        record = store.set_budget(args.key, None if args.budget.strip().lower() == "none" else args.budget)
    if record.budget_nano_usd is None:
        print(f"Key {record.name!r} (id {record.id}) has no spend budget now.")
    else:
        print(f"Key {record.name!r} (id {record.id}): budget {usd(record.budget_nano_usd)} USD per "
              f"{record.budget_period} (UTC).")
    return 0
