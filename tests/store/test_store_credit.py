"""Credit, budgets and held credit (store/credit.py). Each test runs on SQLite and PostgreSQL (conftest.py)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from lastrank.errors import BudgetExceededError, InsufficientCreditError, InvalidRequestError
from lastrank.store import UsageRow, open_store
from lastrank.store import credit
from support.threads import in_threads

NANO = 1_000_000_000


def _row(request_id: str, key_id: str, cost_nano: int, documents: int = 10) -> UsageRow:
    return UsageRow(request_id, key_id, "m", "/v1/rerank", "jina", documents, 100, 1, 200, 5.0, cost_nano / NANO)


def _balance(store, key_id: str) -> int | None:
    return store.get_key(key_id).balance_nano_usd


def test_money_is_exact_nano_dollars():
    assert credit.to_nano("5") == 5 * NANO
    assert credit.to_nano(0.1) == 100_000_000  # from the decimal text, not the binary float
    assert credit.to_nano("-2.5") == -2_500_000_000
    assert credit.price_nano(3, 0.008) == 24_000  # 3 documents at 0.008 USD per 1,000
    assert credit.price_nano(1000, 0.008) == 8_000_000
    assert credit.price_nano(1, 0.0000015) == 2  # 1.5 nano-USD rounds half up
    for bad in ("x", "nan", "inf", "1e-10", True, None):
        with pytest.raises(InvalidRequestError):
            credit.to_nano(bad)
    assert credit.parse_budget("1.00/day") == (NANO, "day")
    assert credit.parse_budget("20/Month") == (20 * NANO, "month")
    for bad in ("1", "1/week", "0/day", "-1/day", "x/day"):
        with pytest.raises(InvalidRequestError):
            credit.parse_budget(bad)
    start, reset = credit.period_bounds("month", datetime(2026, 12, 31, 23, 0, tzinfo=timezone.utc))
    assert (start, reset) == (datetime(2026, 12, 1, tzinfo=timezone.utc), datetime(2027, 1, 1, tzinfo=timezone.utc))


def test_a_key_without_credit_is_unlimited(store):
    record, _ = store.create_key("free")
    assert record.balance_nano_usd is None and not record.billed_with_credit
    [acct] = store.credit_accounts()
    assert acct["balance_usd"] is None and acct["granted_usd"] is None


def test_grant_hold_settle_release(store):
    record, plaintext = store.create_key("acme", credit_usd="0.00005")  # 50,000 nano-USD
    assert record.balance_nano_usd == 50_000 and record.billed_with_credit
    assert store.verify_key(plaintext).balance_nano_usd == 50_000
    store.hold_credit(record.id, "r1", 30_000, hold_s=60)
    assert _balance(store, record.id) == 20_000
    with pytest.raises(InsufficientCreditError, match="costs 0.000030000 USD and the key has 0.000020000 USD left"):
        store.hold_credit(record.id, "r2", 30_000, hold_s=60)
    assert _balance(store, record.id) == 20_000  # a refused hold takes nothing
    assert store.record_usage(_row("r1", record.id, 30_000), held=True)
    assert _balance(store, record.id) == 20_000  # the hold became the charge, once
    assert store.get_usage("r1").cost_usd == 30_000 / NANO
    # a failed request gives its hold back; releasing twice gives nothing more
    store.hold_credit(record.id, "r3", 20_000, hold_s=60)
    assert _balance(store, record.id) == 0
    assert store.release_credit("r3") and not store.release_credit("r3")
    assert _balance(store, record.id) == 20_000
    # settling without a hold (released, or expired and swept) bills nothing
    with pytest.raises(InsufficientCreditError, match="expired"):
        store.record_usage(_row("r3", record.id, 20_000), held=True)
    assert store.get_usage("r3") is None and _balance(store, record.id) == 20_000
    [acct] = store.credit_accounts("acme")
    assert (acct["granted_usd"], acct["balance_usd"], acct["spent_usd"], acct["held_usd"]) == (
        50_000 / NANO, 20_000 / NANO, 30_000 / NANO, 0.0)


def test_a_repeated_ledger_row_is_not_charged_twice(store):
    record, _ = store.create_key("acme", credit_usd=1)
    store.hold_credit(record.id, "r1", 1000, hold_s=60)
    assert store.record_usage(_row("r1", record.id, 1000), held=True)
    store.hold_credit(record.id, "r1-again", 1000, hold_s=60)
    # a second settle of the same request id (a bug or a retry) finds the row: its charge goes back
    with store._write() as conn:
        conn.execute("UPDATE credit_holds SET request_id = ? WHERE request_id = ?", ("r1", "r1-again"))
    assert not store.record_usage(_row("r1", record.id, 1000), held=True)
    assert _balance(store, record.id) == NANO - 1000


def test_top_up_adjust_and_unlimited(store):
    record, _ = store.create_key("acme")
    assert store.grant_credit("acme", 10).balance_nano_usd == 10 * NANO  # an unlimited key starts from 0
    assert store.grant_credit(record.id, "-2.5").balance_nano_usd == 7_500_000_000
    with pytest.raises(InvalidRequestError, match="below 0"):
        store.grant_credit("acme", -8)
    with pytest.raises(InvalidRequestError):
        store.grant_credit("acme", 0)
    assert store.credit_accounts("acme")[0]["granted_usd"] == 7.5
    assert store.set_unlimited("acme").balance_nano_usd is None
    store.hold_credit(record.id, "r1", 10**15, hold_s=60)  # unlimited: any price is held, nothing debited
    assert store.record_usage(_row("r1", record.id, 10**15), held=True)
    assert _balance(store, record.id) is None


def test_budget_per_day_counts_ledger_and_held(store):
    record, _ = store.create_key("acme", budget="0.0001/day")  # 100,000 nano-USD a day, no credit limit
    assert (record.budget_nano_usd, record.budget_period, record.balance_nano_usd) == (100_000, "day", None)
    store.hold_credit(record.id, "r1", 60_000, hold_s=60)
    assert store.record_usage(_row("r1", record.id, 60_000), held=True)
    store.hold_credit(record.id, "r2", 30_000, hold_s=60)  # held, not yet billed: counts too
    with pytest.raises(BudgetExceededError) as e:
        store.hold_credit(record.id, "r3", 20_000, hold_s=60)
    assert "per day has 0.000010000 USD left" in e.value.message and "resets at" in e.value.message
    assert 0 < e.value.retry_after <= 86_400
    store.release_credit("r2")
    store.hold_credit(record.id, "r3", 20_000, hold_s=60)
    assert store.set_budget("acme", None).budget_nano_usd is None
    store.hold_credit(record.id, "r4", 10**9, hold_s=60)


def test_an_expired_hold_is_given_back(store):
    """A process that died between hold and bill: its hold expires and is swept back (at start, or by the key's
    next hold); a settle after that bills nothing."""
    record, _ = store.create_key("acme", credit_usd="0.00001")
    store.hold_credit(record.id, "dead", 10_000, hold_s=-1)  # already expired
    assert _balance(store, record.id) == 0
    assert store.sweep_credit_holds() == 1 and _balance(store, record.id) == 10_000
    store.hold_credit(record.id, "dead2", 10_000, hold_s=-1)
    store.hold_credit(record.id, "live", 10_000, hold_s=60)  # the key's next hold sweeps the expired one first
    assert _balance(store, record.id) == 0
    with pytest.raises(InsufficientCreditError):
        store.record_usage(_row("dead2", record.id, 10_000), held=True)
    assert store.record_usage(_row("live", record.id, 10_000), held=True)
    assert store.count_usage("acme") == 1 and _balance(store, record.id) == 0


def test_racing_holds_never_overdraw(target):
    """Threads of two store objects (two processes' worth of connections) race on one small balance."""
    with open_store(target) as a, open_store(target) as b:
        record, _ = a.create_key("acme", credit_usd="0.0001")  # 100,000 nano-USD: 10 requests of 10,000
        won, lost = [], []

        def client(store, i):
            try:
                store.hold_credit(record.id, f"r{i}", 10_000, hold_s=60)
            except InsufficientCreditError:
                lost.append(i)
                return
            store.record_usage(_row(f"r{i}", record.id, 10_000), held=True)
            won.append(i)

        in_threads(24, lambda i: client(a if i % 2 else b, i))
        assert len(won) == 10 and len(lost) == 14
        assert a.count_usage("acme") == 10
        assert a.get_key(record.id).balance_nano_usd == 0
        assert sum(round(r.cost_usd * NANO) for r in a.list_usage("acme")) == 100_000


def test_racing_holds_never_pass_a_budget(target):
    """The budget counts ledger + held in one snapshot under the key's lock: racing requests never pass it."""
    with open_store(target) as a, open_store(target) as b:
        record, _ = a.create_key("team", budget="0.000055/day")  # 55,000 nano-USD a day: 5 requests of 10,000
        won = []

        def client(store, i):
            try:
                store.hold_credit(record.id, f"r{i}", 10_000, hold_s=60)
            except BudgetExceededError:
                return
            store.record_usage(_row(f"r{i}", record.id, 10_000), held=True)
            won.append(i)

        in_threads(20, lambda i: client(a if i % 2 else b, i))
        assert len(won) == 5 and a.count_usage("team") == 5
        assert a.credit_accounts("team")[0]["period_spent_usd"] == 50_000 / NANO
