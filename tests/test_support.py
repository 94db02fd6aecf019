"""The shared helpers' own checks (tests/test_ranking_order.py has ranking_order's): the kill-under-load harness
sorts what its clients got and its ledger check fails on each way billing can go wrong; in_threads runs workers
at once and fails the test when one of them raised."""

from __future__ import annotations

import threading
import time

import pytest

from support.fake_scheduler import FakeScheduler
from support.kill_under_load import Load, assert_billed_exactly
from support.live_server import LiveServer
from support.threads import in_threads


def test_the_ledger_check_fails_on_each_billing_mistake():
    assert_billed_exactly(["a", "b", "c"], ["a", "b"], unanswered_at_most=1)  # c: answered, then the kill
    assert_billed_exactly(["old", "a"], ["a"], before=["old"], refused=["r"])
    with pytest.raises(AssertionError, match="billed twice"):
        assert_billed_exactly(["a", "a"], ["a"])
    with pytest.raises(AssertionError, match="not in the ledger"):
        assert_billed_exactly(["a"], ["a", "b"])
    with pytest.raises(AssertionError, match="refused request was billed"):
        assert_billed_exactly(["a", "r"], ["a"], refused=["r"], unanswered_at_most=1)
    with pytest.raises(AssertionError, match="without a 200"):
        assert_billed_exactly(["a", "b", "c"], ["a"], unanswered_at_most=1)
    with pytest.raises(AssertionError, match="not in the ledger"):
        assert_billed_exactly(["old"], ["old"], before=["old"])  # a row from before is not this answer's


def test_the_load_sorts_answers_refusals_and_cut_requests(tmp_path):
    from lastrank.api.settings import ServerSettings
    from lastrank.store import Store

    scheduler = FakeScheduler()
    with Store(tmp_path / "ledger.db") as store:
        srv = LiveServer(ServerSettings(), store, scheduler=scheduler)
        with srv, Load(srv.url, "solar panels", ["solar panels", "wind"], clients=2, seconds=30,
                       refusal=lambda r: r.status_code == 503) as load:
            load.wait_for(4)
            scheduler.overloaded = True  # 503 from now on: refusals
            until(lambda: load.refused, load)
        # the server is gone: a request to it is cut, and with stop_when_cut its client stops
        with Load(srv.url, "q", ["d"], clients=1, seconds=30, stop_when_cut=True) as gone:
            until(lambda: gone.cut, gone)
        rows = [row.request_id for row in store.list_usage()]
    assert len(load.answered) >= 4 and load.refused and not load.cut and not load.other, load.other
    assert len(gone.cut) == 1 and not gone.answered and not gone.hung
    assert_billed_exactly(rows, load.answered, refused=load.refused)


def until(condition, load: Load) -> None:
    while not condition() and time.monotonic() < load.deadline:
        time.sleep(0.01)


def test_in_threads_runs_every_worker_at_once_and_raises_what_one_raised():
    seen = []
    meet = threading.Barrier(4, timeout=10)  # passes only if all four are running at the same time
    in_threads(4, lambda i: (meet.wait(), seen.append(i)))
    assert sorted(seen) == [0, 1, 2, 3]

    def worker(i):
        if i == 2:
            raise KeyError("worker 2")

    with pytest.raises(KeyError, match="worker 2"):
        in_threads(4, worker, together=True)
    with pytest.raises(AssertionError, match="still running"):
        in_threads(1, lambda i: time.sleep(0.5), timeout=0.05)
