"""`lastrank usage` (parser: cli/usage.py): the totals, the credit accounts and, with --errors, the refusals."""

from __future__ import annotations

import argparse
import json

from lastrank.cli.commands.keys import format_table, open_store
from lastrank.store.ledger import total


def run(args: argparse.Namespace) -> int:
    if args.errors:
        return _errors(args)
    with open_store(args) as store:
        rows = store.usage_summary(key=args.key, since=args.since)
        accounts = store.credit_accounts(key=args.key)  # balances and budgets: now, not since --since
    grand = total(rows)
    if args.json:
        print(json.dumps({"rows": rows, "total": grand, "accounts": accounts}, indent=2))
        return 0
    if not rows:
        print("No usage recorded" + (f" since {args.since}" if args.since else "") + ".")
        _print_accounts(accounts)
        return 0

    def cells(day: str, key_id: str, name: str, r: dict) -> list[str]:
        return [
            day,
            key_id,
            name,
            str(r["requests"]),
            str(r["errors"]),
            str(r["documents"]),
            str(r["prompt_tokens"]),
            f"{r['cost_usd']:.6f}",
        ]

    body = [cells(r["day"], r["key_id"] or "(no key)", r["key_name"] or "-", r) for r in rows]
    body.append(cells("TOTAL", "", "", grand))
    headers = ["DAY (UTC)", "KEY", "NAME", "REQUESTS", "ERRORS", "DOCUMENTS", "TOKENS", "COST (USD)"]
    print(format_table(headers, body, right={3, 4, 5, 6, 7}))
    print("ERRORS: requests refused or failed (4xx, 5xx), counted but not billed; `lastrank usage --errors` lists them.")
    _print_accounts(accounts)
    return 0


def _print_accounts(accounts: list[dict]) -> None:
    """Balance and budget of the keys with credit or a budget (store/credit.py); nothing when none has."""
    shown = [a for a in accounts if a["balance_usd"] is not None or a["budget_usd"] is not None
             or a["granted_usd"] is not None]
    if not shown:
        return

    def money(x: float | None) -> str:
        return "-" if x is None else f"{x:.6f}"

    body = [[a["key_id"], a["key_name"], money(a["granted_usd"]), money(a["spent_usd"]), money(a["held_usd"]),
             "unlimited" if a["balance_usd"] is None else money(a["balance_usd"]),
             "-" if a["budget_usd"] is None else f"{money(a['budget_usd'])}/{a['budget_period']}",
             "-" if a["period_spent_usd"] is None else money(a["period_spent_usd"]),
             a["period_resets_at"] or "-"] for a in shown]
    print()
    print(format_table(["KEY", "NAME", "GRANTED", "SPENT", "HELD", "BALANCE", "BUDGET", "IN PERIOD", "RESETS (UTC)"],
                       body, right={2, 3, 4, 5, 7}))
    print("USD. SPENT: every billed request of the key; HELD: requests running now; BALANCE: credit left.")


def _errors(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        rows = store.list_refusals(key=args.key, since=args.since)
        names = {k.id: k.name for k in store.list_keys()}
    if args.json:
        print(json.dumps({"refusals": rows}, indent=2))
        return 0
    if not rows:
        print("No refused requests recorded" + (f" since {args.since}" if args.since else "") + ".")
        return 0
    body = [[r["day"], r["key_id"] or "(no key)", names.get(r["key_id"], "-"), r["route"], str(r["status"]),
             r["model"] or "-", str(r["count"])] for r in rows]
    headers = ["DAY (UTC)", "KEY", "NAME", "ROUTE", "STATUS", "MODEL", "COUNT"]
    print(format_table(headers, body, right={4, 6}))
    return 0
