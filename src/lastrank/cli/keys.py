"""`lastrank keys create|list|revoke|credit|budget`: manage API keys, their credit and budgets in the store."""

from __future__ import annotations

import argparse

from lastrank.api.settings import DB_ENV, STORE_ENV
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
    create.set_defaults(handler="lastrank.cli.commands.keys:create")

    credit = sub.add_parser("credit", help="top up or adjust a key's credit, or make it unlimited")
    credit.add_argument("key", metavar="ID_OR_NAME")
    how = credit.add_mutually_exclusive_group(required=True)
    how.add_argument("--add", metavar="USD", help="add this much credit (negative: take it away; never below 0)")
    how.add_argument("--unlimited", action="store_true", help="no credit limit (the balance is forgotten)")
    credit.add_argument("--note", default=None, help="recorded with the grant (e.g. an invoice number)")
    add_db_argument(credit)
    credit.set_defaults(handler="lastrank.cli.commands.keys:credit")

    budget = sub.add_parser("budget", help="set or remove a key's spend budget per UTC day or month")
    budget.add_argument("key", metavar="ID_OR_NAME")
    budget.add_argument("budget", metavar="USD/PERIOD|none", help="e.g. 1.00/day or 20/month; none removes it")
    add_db_argument(budget)
    budget.set_defaults(handler="lastrank.cli.commands.keys:budget")

    lst = sub.add_parser("list", help="list keys (never their secrets)")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_db_argument(lst)
    lst.set_defaults(handler="lastrank.cli.commands.keys:list_keys")

    revoke = sub.add_parser("revoke", help="revoke a key by id or name; running servers refuse it within 0.5 s")
    revoke.add_argument("key", metavar="ID_OR_NAME")
    add_db_argument(revoke)
    revoke.set_defaults(handler="lastrank.cli.commands.keys:revoke")
