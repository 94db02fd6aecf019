"""`lastrank keys create --credit/--budget`, `keys credit`, `keys budget` and the balances in `lastrank usage`,
through the real CLI entry point on SQLite (the store's credit code runs on PostgreSQL in tests/store)."""

from __future__ import annotations

import json

import pytest

from lastrank.cli import main
from lastrank.cli.commands.keys import usd
from lastrank.store import UsageRow, open_store


@pytest.fixture
def db(tmp_path, monkeypatch) -> list[str]:
    monkeypatch.delenv("LASTRANK_DB", raising=False)
    monkeypatch.delenv("LASTRANK_STORE", raising=False)
    return ["--db", str(tmp_path / "cli.db")]


def test_usd_is_exact():
    assert [usd(n) for n in (0, 5 * 10**9, 1, -2_500_000_000, 24_000)] == [
        "0.00", "5.00", "0.000000001", "-2.50", "0.000024"]


def test_credit_and_budget_commands(capsys, db):
    assert main(["keys", "create", "--name", "acme", "--credit", "5", "--budget", "1.00/day", *db]) == 0
    capsys.readouterr()
    assert main(["keys", "list", *db]) == 0
    out, _ = capsys.readouterr()
    assert "5.00" in out and "1.00/day" in out
    assert main(["keys", "credit", "acme", "--add", "10", "--note", "invoice 7", *db]) == 0
    assert "credit 15.00 USD" in capsys.readouterr().out
    assert main(["keys", "credit", "acme", "--add", "-0.5", *db]) == 0
    assert "credit 14.50 USD" in capsys.readouterr().out
    assert main(["keys", "credit", "acme", "--add", "-20", *db]) != 0
    err = capsys.readouterr().err
    assert err.startswith("lastrank: error: ") and "below 0" in err and err.count("\n") == 1
    assert main(["keys", "budget", "acme", "2/month", *db]) == 0
    assert "budget 2.00 USD per month" in capsys.readouterr().out
    assert main(["keys", "budget", "acme", "2/week", *db]) != 0
    assert "day or month" in capsys.readouterr().err

    with open_store(db[1]) as store:
        key = store.get_key("acme")
        store.hold_credit(key.id, "r1", 24_000, hold_s=60)
        store.record_usage(UsageRow("r1", key.id, "m", "/v1/rerank", "jina", 3, 30, 1, 200, 1.0, 24_000 / 1e9),
                           held=True)
    assert main(["usage", *db]) == 0
    out = capsys.readouterr().out
    assert "BALANCE" in out and "14.499976" in out and "2.000000/month" in out
    assert main(["usage", "--json", *db]) == 0
    [acct] = json.loads(capsys.readouterr().out)["accounts"]
    assert (acct["granted_usd"], acct["spent_usd"], acct["balance_usd"]) == (14.5, 0.000024, 14.499976)
    assert acct["period_spent_usd"] == 0.000024

    assert main(["keys", "credit", "acme", "--unlimited", *db]) == 0
    assert "no credit limit" in capsys.readouterr().out
    assert main(["keys", "budget", "acme", "none", *db]) == 0
    assert "no spend budget" in capsys.readouterr().out
    assert main(["keys", "list", "--json", *db]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["balance_usd"], listed["budget_usd"]) == (None, None)
