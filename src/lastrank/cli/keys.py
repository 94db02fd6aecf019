"""`lastrank keys create|list|revoke|credit|budget`: manage API keys, their credit and budgets in the store."""

from __future__ import annotations

import argparse
import json
import sys

from lastrank.api.settings import DB_ENV, STORE_ENV
from lastrank.api.settings import store_target as resolve_store_target
from lastrank.cli.argtypes import positive_int


def add_db_argument(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--store",
        metavar="URL_OR_PATH",
        default=None,
        help=f"the store: postgresql://user:password@host/db for a PostgreSQL database shared by several "
             f"servers, or a SQLite file path (default: ${STORE_ENV}, else ${DB_ENV}, else lastrank.db in the "
             "user data folder)",
    )
    where.add_argument("--db", metavar="PATH", default=None, help="the SQLite store file (same as --store PATH)")


def store_target(args: argparse.Namespace) -> str | None:
    """--store, else --db, else $LASTRANK_STORE, else $LASTRANK_DB (api/settings.py); None: default."""
    return resolve_store_target(args.store, args.db)


def open_store(args: argparse.Namespace):
    """The store named by the arguments or the environment (see store_target): SQLite or PostgreSQL."""
    from lastrank.store import open_store as open_target

    return open_target(store_target(args))


def register(subparsers) -> None:
    keys = subparsers.add_parser(
        "keys",
        help="create, list and revoke API keys",
        description="Create, list and revoke API keys. Only a hash of each key is stored.",
    )
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    sub.required = True

    create = sub.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--name", required=True, help="a unique name among active keys, e.g. the customer")
    create.add_argument("--requests-per-minute", type=positive_int, default=None, metavar="R", help="default: no limit")
    create.add_argument("--documents-per-minute", type=positive_int, default=None, metavar="D", help="default: no limit")
    create.add_argument("--models", default=None, metavar="NAME[,NAME...]",
                        help="served model names this key may use (403 for others); default: every model")
    create.add_argument("--credit", default=None, metavar="USD",
                        help="credit in USD its requests are paid from (402 once spent; docs/billing.md); "
                             "default: unlimited")
    create.add_argument("--budget", default=None, metavar="USD/PERIOD",
                        help="a spend budget per UTC day or month, e.g. 1.00/day or 20/month (402 past it)")
    add_db_argument(create)
    create.set_defaults(func=_create)

    credit = sub.add_parser("credit", help="top up or adjust a key's credit, or make it unlimited")
    credit.add_argument("key", metavar="ID_OR_NAME")
    how = credit.add_mutually_exclusive_group(required=True)
    how.add_argument("--add", metavar="USD", help="add this much credit (negative: take it away; never below 0)")
    how.add_argument("--unlimited", action="store_true", help="no credit limit (the balance is forgotten)")
    credit.add_argument("--note", default=None, help="recorded with the grant (e.g. an invoice number)")
    add_db_argument(credit)
    credit.set_defaults(func=_credit)

    budget = sub.add_parser("budget", help="set or remove a key's spend budget per UTC day or month")
    budget.add_argument("key", metavar="ID_OR_NAME")
    budget.add_argument("budget", metavar="USD/PERIOD|none", help="e.g. 1.00/day or 20/month; none removes it")
    add_db_argument(budget)
    budget.set_defaults(func=_budget)

    lst = sub.add_parser("list", help="list keys (never their secrets)")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_db_argument(lst)
    lst.set_defaults(func=_list)

    revoke = sub.add_parser("revoke", help="revoke a key by id or name; running servers refuse it within 0.5 s")
    revoke.add_argument("key", metavar="ID_OR_NAME")
    add_db_argument(revoke)
    revoke.set_defaults(func=_revoke)


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


def _create(args: argparse.Namespace) -> int:
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


def _list(args: argparse.Namespace) -> int:
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


def _revoke(args: argparse.Namespace) -> int:
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


def _credit(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        if args.unlimited:
            record = store.set_unlimited(args.key)
            print(f"Key {record.name!r} (id {record.id}) has no credit limit now.")
            return 0
        record = store.grant_credit(args.key, args.add, note=args.note)
    print(f"Key {record.name!r} (id {record.id}): credit {usd(record.balance_nano_usd)} USD.")
    return 0


def _budget(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        record = store.set_budget(args.key, None if args.budget.strip().lower() == "none" else args.budget)
    if record.budget_nano_usd is None:
        print(f"Key {record.name!r} (id {record.id}) has no spend budget now.")
    else:
        print(f"Key {record.name!r} (id {record.id}): budget {usd(record.budget_nano_usd)} USD per "
              f"{record.budget_period} (UTC).")
    return 0
