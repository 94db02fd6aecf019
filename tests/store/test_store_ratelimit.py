"""Rate-limit buckets kept in the store: one allowance per key however many clients (replicas) share the
store. Each test runs on SQLite and PostgreSQL (conftest.py)."""

from __future__ import annotations

import pytest

from lastrank.store import open_store
from lastrank.store.ratelimit import refill, wait_for
from support.threads import in_threads


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self, conn) -> float:
        return self.now


def take(store, key_id="k1", rpm=None, dpm=None, documents=1):
    return store.take_rate_limit(key_id, requests_per_minute=rpm, documents_per_minute=dpm, documents=documents)


def test_bucket_arithmetic():
    assert refill(60, 0, 100.0, 101.0) == 1.0  # 60 per minute: one a second
    assert refill(60, 59.5, 100.0, 200.0) == 60  # never above a minute's allowance
    assert refill(60, 3, 100.0, 99.0) == 3  # a clock that went back refills nothing
    assert wait_for(60, 0.5, 1) == pytest.approx(0.5)
    assert wait_for(6, 0, 1) == pytest.approx(10.0)
    assert wait_for(6, 2, 1) == 0.0


def test_requests_per_minute_shared_by_two_clients(target):
    """Two replicas of one key with 3 requests per minute: three requests pass in all, not three each."""
    a, b = open_store(target), open_store(target)
    a._clock = b._clock = FakeClock()  # nothing refills between the takes, however slowly they run
    try:
        a.create_key("k")
        assert take(a, rpm=3) is None
        assert take(b, rpm=3) is None
        assert take(a, rpm=3) is None
        for s in (a, b):
            wait, kind = take(s, rpm=3)
            assert kind == "requests" and wait == pytest.approx(20.0)  # a token refills in 20 s
        assert take(b, key_id="other", rpm=3) is None  # another key has its own bucket
    finally:
        a.close()
        b.close()


def test_refill_and_documents_all_or_nothing(store):
    clock = FakeClock()
    store._clock = clock
    assert take(store, rpm=60, dpm=100, documents=80) is None
    wait, kind = take(store, rpm=60, dpm=100, documents=30)  # 20 documents left: short by 10
    assert kind == "documents" and wait == pytest.approx(6.0)
    # refused: neither bucket was touched (the request token was not spent either)
    clock.now += 6.0  # +10 documents, +6 requests (capped at 60)
    assert take(store, rpm=60, dpm=100, documents=30) is None
    wait, kind = take(store, rpm=60, dpm=100, documents=1)  # 0 documents left
    assert kind == "documents" and wait == pytest.approx(0.6)
    # requests: refilled to 60 at +6 s, one taken since (the refused requests took none): 59 left
    for _ in range(59):
        assert take(store, rpm=60, documents=0) is None
    wait, kind = take(store, rpm=60, documents=0)
    assert kind == "requests" and wait == pytest.approx(1.0)
    clock.now += 1.0
    assert take(store, rpm=60, documents=0) is None


def test_changed_limit_starts_a_full_bucket(store):
    store._clock = FakeClock()
    assert take(store, rpm=1) is None
    assert take(store, rpm=1) is not None
    assert take(store, rpm=5) is None  # the operator raised the limit: a new, full bucket of 5
    for _ in range(4):
        assert take(store, rpm=5) is None
    assert take(store, rpm=5)[1] == "requests"


def test_no_limits_take_nothing(store):
    for _ in range(100):
        assert take(store) is None
    with store._read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM rate_buckets").fetchone()[0] == 0


def test_concurrent_clients_never_overspend(target):
    """Eight threads over two clients race for one key's 40 requests a minute: exactly 40 pass. The clock stands
    still: on the real one a 41st token refills after 1.5 s, which 80 contended transactions (SQLite's busy handler
    sleeps up to 100 ms a try) could take on a loaded machine, and the count would be 41 for no fault of the store."""
    stores = [open_store(target) for _ in range(2)]
    clock = FakeClock()
    for s in stores:
        s._clock = clock
    passed = [0] * 8

    def worker(i: int):
        for _ in range(10):
            if take(stores[i % 2], key_id="hot", rpm=40, documents=0) is None:
                passed[i] += 1

    try:
        in_threads(8, worker, together=True)
    finally:
        for s in stores:
            s.close()
    assert sum(passed) == 40  # 80 attempts, 40 tokens
