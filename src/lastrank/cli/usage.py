"""`lastrank usage`: totals per key and UTC day, with a grand total; `--errors`: the refused requests.

REQUESTS counts every request the server answered for a key: the billed ones (ledger rows) and the ones
it refused (401, 403, 413, 422, 429, 503, ...: counted in the store's refusal counters, never billed).
ERRORS is the refused part. Requests without a valid key (a 401) show as "(no key)".
Then, for keys with credit or a budget: granted, spent, held, balance and the budget's current period.
"""

from __future__ import annotations

from lastrank.cli.keys import add_db_argument


def register(subparsers) -> None:
    usage = subparsers.add_parser("usage", help="usage totals per key and day", description="Usage totals from the ledger per key and UTC day, with a grand total.")
    usage.add_argument("--key", default=None, metavar="K", help="only this key (id or name; a name covers every key that had it)")
    usage.add_argument("--since", default=None, metavar="YYYY-MM-DD", help="from this UTC day on (inclusive)")
    usage.add_argument("--errors", action="store_true",
                       help="list the refused requests by day, key, route and status instead of the totals")
    usage.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_db_argument(usage)
    usage.set_defaults(handler="lastrank.cli.commands.usage:run")
