"""The usage ledger: durable, idempotent rows; summaries; concurrent writers (threads and processes).
Each test taking `store` or `target` runs on SQLite and on PostgreSQL (conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import date, datetime, timedelta, timezone

import pytest

from lastrank.errors import InvalidRequestError, NotFoundError
from lastrank.store import DEFAULT_PRICE_PER_1K_DOCS, Store, UsageRow, cost_for, open_store
from lastrank.store.ledger import total
from support.threads import in_threads


def row(request_id: str, key_id: str | None = None, documents: int = 10, status: int = 200, created_at=None, **kw):
    fields = dict(
        request_id=request_id,
        key_id=key_id,
        model="jinaai/jina-reranker-v3",
        route="/v1/rerank",
        dialect="jina",
        documents=documents,
        prompt_tokens=documents * 100,
        blocks=1,
        status=status,
        latency_ms=12.5,
        cost_usd=cost_for(documents),
        created_at=created_at,
    )
    fields.update(kw)
    return UsageRow(**fields)


def test_cost_for():
    assert DEFAULT_PRICE_PER_1K_DOCS == 0.008
    assert cost_for(1000) == 0.008
    assert cost_for(0) == 0.0
    assert cost_for(3) == 0.000024
    assert cost_for(500, price_per_1k_docs=2) == 1.0
    for bad in [(-1,), (1.5,), (True,), (10, -0.1), (10, float("nan")), (10, float("inf")), (10, "0.1")]:
        with pytest.raises(ValueError):
            cost_for(*bad)


def test_record_and_read_back(store):
    key, _ = store.create_key("acme")
    when = datetime(2026, 11, 27, 9, 30, 1, 123456, tzinfo=timezone.utc)
    r = row("req-1", key.id, documents=7, status=200, created_at=when, latency_ms=33.25, dialect="cohere-v2")
    assert store.record_usage(r) is True
    assert store.get_usage("req-1") == r
    assert store.get_usage("nope") is None
    assert store.count_usage() == 1
    assert store.list_usage() == [r]


def test_created_at_defaults_to_now_utc(store):
    before = datetime.now(timezone.utc)
    store.record_usage(row("r"))
    after = datetime.now(timezone.utc)
    got = store.get_usage("r").created_at
    assert before <= got <= after and got.tzinfo == timezone.utc


def test_aware_non_utc_created_at_is_stored_as_utc(store):
    plus2 = timezone(timedelta(hours=2))
    store.record_usage(row("r", created_at=datetime(2026, 1, 2, 1, 0, tzinfo=plus2)))
    assert store.get_usage("r").created_at == datetime(2026, 1, 1, 23, 0, tzinfo=timezone.utc)
    assert store.usage_summary()[0]["day"] == "2026-01-01"


def test_same_request_id_is_recorded_once(store):
    first = row("dup", documents=5)
    assert store.record_usage(first) is True
    assert store.record_usage(row("dup", documents=500)) is False
    assert store.count_usage() == 1
    assert store.get_usage("dup").documents == 5
    assert store.usage_summary()[0]["documents"] == 5


@pytest.mark.parametrize(
    "bad",
    [
        dict(request_id=""),
        dict(request_id=None),
        dict(key_id=""),
        dict(route=""),
        dict(model=None),
        dict(documents=-1),
        dict(documents=1.0),
        dict(prompt_tokens=True),
        dict(blocks=-3),
        dict(status=99),
        dict(status=600),
        dict(status="200"),
        dict(latency_ms=-0.1),
        dict(latency_ms=float("nan")),
        dict(cost_usd=-1.0),
        dict(created_at=datetime(2026, 1, 1)),  # naive: ambiguous day
        dict(created_at="2026-01-01"),
    ],
)
def test_bad_rows_are_refused(bad):
    fields = dict(
        request_id="r", key_id=None, model="m", route="/v1/rerank", dialect="jina", documents=1,
        prompt_tokens=1, blocks=1, status=200, latency_ms=1.0, cost_usd=0.0,
    )
    fields.update(bad)
    with pytest.raises(ValueError):
        UsageRow(**fields)


def test_record_usage_takes_a_usage_row(store):
    with pytest.raises(TypeError):
        store.record_usage({"request_id": "r"})
    assert store.count_usage() == 0


def test_pragmas_on_every_thread(tmp_path):
    store = Store(tmp_path / "ledger.db")
    seen = {}

    def look():
        conn = store._conn()
        seen["journal"] = conn.execute("PRAGMA journal_mode").fetchone()[0]
        seen["sync"] = conn.execute("PRAGMA synchronous").fetchone()[0]

    t = threading.Thread(target=look)
    t.start()
    t.join()
    store.close()
    assert seen == {"journal": "wal", "sync": 2}  # 2 == FULL: the WAL is fsynced at every commit


def _python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stderr=subprocess.PIPE, text=True)


def test_rows_survive_a_killed_process(target):
    """Each row is committed before record_usage returns: SIGKILL right after loses nothing."""
    child = _python(
        """
        import os, signal, sys
        from lastrank.store import UsageRow, open_store
        store = open_store(sys.argv[1])
        for i in range(25):
            store.record_usage(UsageRow(f"c{i}", None, "m", "/v1/rerank", "jina", 2, 20, 1, 200, 1.0, 0.000016))
        os.kill(os.getpid(), signal.SIGKILL)  # no close(), no checkpoint, no atexit
        """,
        target,
    )
    _, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    with open_store(target) as store:
        assert store.count_usage() == 25
        assert {r.request_id for r in store.list_usage()} == {f"c{i}" for i in range(25)}
        assert store.usage_summary()[0]["cost_usd"] == 0.0004


def test_summary_per_key_and_day(store):
    a, _ = store.create_key("a")
    b, _ = store.create_key("b")
    d1 = datetime(2026, 11, 25, 23, 59, 59, tzinfo=timezone.utc)
    d2 = datetime(2026, 11, 26, 0, 0, 0, tzinfo=timezone.utc)
    store.record_usage(row("1", a.id, documents=10, created_at=d1))
    store.record_usage(row("2", a.id, documents=20, created_at=d1 - timedelta(hours=5)))
    store.record_usage(row("3", a.id, documents=1, status=429, cost_usd=0.0, created_at=d2))
    store.record_usage(row("4", b.id, documents=100, created_at=d2))
    store.record_usage(row("5", None, documents=4, created_at=d2))

    rows = store.usage_summary()
    # by day, then the keyless rows, then by key id
    assert [(r["day"], r["key_id"]) for r in rows] == [("2026-11-25", a.id), ("2026-11-26", None)] + [
        ("2026-11-26", k) for k in sorted([a.id, b.id])
    ]
    rows = rows[:2] + sorted(rows[2:], key=lambda r: r["key_name"])  # a, then b
    first = rows[0]
    assert first == {
        "day": "2026-11-25",
        "key_id": a.id,
        "key_name": "a",
        "requests": 2,
        "errors": 0,
        "documents": 30,
        "prompt_tokens": 3000,
        "blocks": 2,
        "cost_usd": cost_for(30),
    }
    assert rows[1]["key_name"] is None and rows[1]["documents"] == 4
    assert rows[2]["errors"] == 1 and rows[2]["cost_usd"] == 0.0
    assert rows[3]["key_name"] == "b" and rows[3]["documents"] == 100

    # by key: id, prefix or name
    assert [r["documents"] for r in store.usage_summary(key=a.id)] == [30, 1]
    assert store.usage_summary(key=a.prefix) == store.usage_summary(key="a")
    assert [r["documents"] for r in store.usage_summary(key="b")] == [100]
    # since: a UTC day, inclusive, as a date or a string
    assert [r["key_id"] for r in store.usage_summary(since="2026-11-26")] == [None] + sorted([a.id, b.id])
    assert store.usage_summary(since=date(2026, 11, 26)) == store.usage_summary(since="2026-11-26")
    assert store.usage_summary(since="2026-11-27") == []
    assert len(store.usage_summary(since="2026-11-25")) == 4
    assert [r["documents"] for r in store.usage_summary(key="a", since="2026-11-26")] == [1]
    assert store.count_usage(key="a") == 3 and store.count_usage(since="2026-11-26") == 3
    assert store.count_usage(key="a", since="2026-11-26") == 1

    grand = total(rows)
    assert grand["requests"] == 5 and grand["documents"] == 135 and grand["errors"] == 1
    assert grand["cost_usd"] == cost_for(134)


def test_summary_by_name_covers_a_rotated_key(store):
    old, _ = store.create_key("acme")
    store.record_usage(row("1", old.id, documents=1))
    store.revoke_key("acme")
    new, _ = store.create_key("acme")
    store.record_usage(row("2", new.id, documents=2))
    assert sorted(r["documents"] for r in store.usage_summary(key="acme")) == [1, 2]
    assert [r["documents"] for r in store.usage_summary(key=old.id)] == [1]


def test_summary_bad_arguments(store):
    store.create_key("a")
    for since in ["2026-13-01", "2026-02-30", "yesterday", "20261127", "2026-11-27T00:00"]:
        with pytest.raises(InvalidRequestError, match="YYYY-MM-DD"):
            store.usage_summary(since=since)
    with pytest.raises(NotFoundError):
        store.usage_summary(key="nobody")
    with pytest.raises(ValueError):
        store.usage_summary(since=datetime(2026, 1, 1))  # naive


def test_costs_sum_exactly(store):
    for i in range(125):
        store.record_usage(row(f"r{i}", documents=1))
    # as floats, 125 additions of 8e-06 give 0.000999999999999998; stored as nano-dollars the sum is exact
    assert store.usage_summary()[0]["cost_usd"] == 0.001


def test_concurrent_threads_lose_no_rows(store):
    inserted = [0] * 8

    def worker(i: int):
        for n in range(15):
            store.record_usage(row(f"t{i}-{n}", documents=1))
        for n in range(10):  # every thread also races the others on the same ids
            if store.record_usage(row(f"shared-{n}", documents=1)):
                inserted[i] += 1

    in_threads(8, worker)
    assert sum(inserted) == 10
    assert store.count_usage() == 8 * 15 + 10
    assert {r.request_id for r in store.list_usage()} == {f"t{i}-{n}" for i in range(8) for n in range(15)} | {
        f"shared-{n}" for n in range(10)
    }


def test_two_processes_lose_no_rows(target, tmp_path):
    """Two processes open a fresh store at the same moment (both migrate) and write interleaved; for the
    request ids both write, exactly one insert succeeds (exactly once across processes)."""
    go = tmp_path / "go"
    code = """
        import os, sys, time
        from lastrank.store import UsageRow, open_store
        target, go, tag = sys.argv[1:]
        open(f"{go}.{tag}.ready", "w").close()
        while not os.path.exists(go):
            time.sleep(0.005)
        store = open_store(target)
        won = 0
        for i in range(50):
            store.record_usage(UsageRow(f"{tag}-{i}", None, "m", "/v1/rerank", "jina", 1, 10, 1, 200, 1.0, 0.000008))
            won += store.record_usage(UsageRow(f"both-{i}", None, "m", "/v1/rerank", "jina", 1, 10, 1, 200, 1.0, 0.000008))
        store.close()
        print(won)
    """
    children = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), target, str(go), tag], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for tag in ("p", "q")
    ]
    won = 0
    try:
        while not all(os.path.exists(f"{go}.{tag}.ready") for tag in ("p", "q")):
            if any(c.poll() is not None for c in children):
                break
            time.sleep(0.005)
        go.touch()
        for c in children:
            out, err = c.communicate(timeout=120)
            assert c.returncode == 0, err
            won += int(out)
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
    assert won == 50  # each shared id: one process wrote it, the other was told it was already there
    with open_store(target) as store:
        ids = {r.request_id for r in store.list_usage()}
        assert ids == {f"{t}-{i}" for t in ("p", "q", "both") for i in range(50)}
        assert store.count_usage() == 150
