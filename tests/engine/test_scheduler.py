"""Scheduler tests against a fake engine: no model, no torch, blocks of chosen sizes.

The fake's `run_blocks` records every call and can be held on a threading.Event, so each test fixes
the queue's state before the worker moves on. Waits are hang guards only; nothing asserts speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import zlib
from dataclasses import dataclass, field

import pytest

from lastrank.engine.scheduler import Scheduler
from lastrank.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    ModelError,
    OverloadedError,
    PayloadTooLargeError,
)
from lastrank.types import RankedDocument, RerankOptions, RerankRequest, RerankResult, Usage

GUARD_S = 10.0  # hang guard for anything we wait on; never reached when the scheduler is right


# --------------------------------------------------------------------------------------- fake engine


@dataclass
class FakeBlock:
    request_id: str
    index: int
    input_ids: list[int]
    doc_indices: list[int]
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (query, document): what the fake "model" scores

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


@dataclass
class FakeOutput:
    request_id: str
    index: int
    scores: list[float]


@dataclass
class FakePlan:
    request: RerankRequest
    blocks: list[FakeBlock]
    usage: Usage = field(default_factory=Usage)


def score(query: str, doc: str) -> float:
    return zlib.crc32(f"{query}\x00{doc}".encode()) / 2**32


class FakeEngine:
    """Same methods as RerankEngine. A document costs len(text) tokens; `docs_per_block` per block.

    run_blocks records [(request_id, block index), ...] per call in `calls`, then waits on `gate`
    when `hold(blocks)` is true (default: every call) and the gate is closed.
    """

    def __init__(self, docs_per_block: int = 1):
        self.docs_per_block = docs_per_block
        self.calls: list[list[tuple[str, int]]] = []
        self.call_tokens: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.hold = None
        self.fail_if = None  # blocks -> Exception | None
        self.drop_an_output = False
        self.plan_gates: dict[str, threading.Event] = {}  # query -> event plan() waits on
        self.planning: set[str] = set()

    def plan(self, request: RerankRequest) -> FakePlan:
        if not request.query:
            raise InvalidRequestError("query must not be empty")
        if request.query in self.plan_gates:
            self.planning.add(request.query)
            assert self.plan_gates[request.query].wait(GUARD_S)
        blocks = []
        for start in range(0, len(request.documents), self.docs_per_block):
            idx = list(range(start, min(start + self.docs_per_block, len(request.documents))))
            ids = [1] * sum(len(request.documents[i]) for i in idx)
            pairs = [(request.query, request.documents[i]) for i in idx]
            blocks.append(FakeBlock(request.request_id, len(blocks), ids, idx, pairs))
        tokens = sum(b.n_tokens for b in blocks)
        usage = Usage(documents=len(request.documents), prompt_tokens=tokens, blocks=len(blocks))
        return FakePlan(request, blocks, usage)

    def run_blocks(self, blocks: list[FakeBlock]) -> list[FakeOutput]:
        self.calls.append([(b.request_id, b.index) for b in blocks])
        self.call_tokens.append([b.n_tokens for b in blocks])
        if self.hold is None or self.hold(blocks):
            assert self.gate.wait(GUARD_S), "test left the gate closed"
        if self.fail_if is not None and (exc := self.fail_if(blocks)) is not None:
            raise exc
        outputs = [FakeOutput(b.request_id, b.index, [score(q, d) for q, d in b.pairs]) for b in blocks]
        return outputs[:-1] if self.drop_an_output else outputs

    def finish(self, plan: FakePlan, outputs: list[FakeOutput]) -> RerankResult:
        # The real finish merges in plan order; a scheduler that mixes up outputs must fail here.
        got = [(o.request_id, o.index) for o in outputs]
        want = [(b.request_id, b.index) for b in plan.blocks]
        if got != want:
            raise AssertionError(f"outputs out of plan order: {got} != {want}")
        scored = [(s, i) for b, o in zip(plan.blocks, outputs) for i, s in zip(b.doc_indices, o.scores)]
        scored.sort(key=lambda t: (-t[0], t[1]))
        if plan.request.options.top_n is not None:
            scored = scored[: plan.request.options.top_n]
        docs = [RankedDocument(i, s, plan.request.documents[i]) for s, i in scored]
        return RerankResult(docs, plan.usage, plan.request.request_id)

    def rerank(self, request: RerankRequest) -> RerankResult:
        plan = self.plan(request)
        return self.finish(plan, self.run_blocks(plan.blocks))

    def ran(self, request_id: str) -> list[int]:
        return [i for call in self.calls for rid, i in call if rid == request_id]


def req(name: str, n_docs: int, doc_tokens: int | list[int] = 10, deadline: float | None = None,
        **options) -> RerankRequest:
    sizes = doc_tokens if isinstance(doc_tokens, list) else [doc_tokens] * n_docs
    docs = [str(i).rjust(size, "d")[-size:] for i, size in enumerate(sizes)]
    return RerankRequest(query=name, documents=docs, options=RerankOptions(**options), request_id=name,
                         deadline=deadline)


# --------------------------------------------------------------------------------------- helpers


def run(coro_fn):
    asyncio.run(asyncio.wait_for(coro_fn(), GUARD_S * 2))


async def until(cond, what: str = "condition"):
    end = time.monotonic() + GUARD_S
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"hang guard: {what} never became true")
        await asyncio.sleep(0.002)


@contextlib.asynccontextmanager
async def started(engine: FakeEngine, **kw):
    sched = Scheduler(engine, **kw)
    await sched.start()
    try:
        yield sched
    finally:
        engine.gate.set()  # never leave the worker parked on a test's gate
        await sched.stop()


def hold_first_call(engine: FakeEngine):
    """Close the gate: the worker parks inside its next run_blocks call until `engine.gate.set()`."""
    engine.gate.clear()


class FakeClock:
    """The scheduler's monotonic clock (what deadlines are compared with), moved only by the test. The event
    loop keeps real time, so a deadline timer waits `deadline - clock.now` real seconds."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __getattr__(self, name):  # perf_counter (tokens/s) and the rest stay real
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    import lastrank.engine.scheduler as scheduler_module

    fake = FakeClock()
    monkeypatch.setattr(scheduler_module, "time", fake)
    return fake


# --------------------------------------------------------------------------------------- tests


def test_small_requests_overtake_a_big_one():
    engine = FakeEngine(docs_per_block=125)

    async def main():
        # 5,000 one-token documents -> 40 blocks of 125 tokens; two big blocks fill a batch.
        big = req("big", 5000, doc_tokens=1)
        smalls = [req(f"small{k}", 10, doc_tokens=1) for k in range(3)]
        async with started(engine, max_batch_tokens=250) as sched:
            hold_first_call(engine)
            big_task = asyncio.create_task(sched.submit(big))
            await until(lambda: len(engine.calls) == 1, "the big request's first batch started")
            small_tasks = [asyncio.create_task(sched.submit(r)) for r in smalls]
            await until(lambda: sched.queued_requests == 4, "small requests admitted")
            engine.gate.set()
            results = await asyncio.gather(big_task, *small_tasks)

        assert engine.calls[0] == [("big", 0), ("big", 1)]
        call_of = {blk: n for n, call in enumerate(engine.calls) for blk in call}
        tenth_big = call_of[("big", 9)]
        for r in smalls:
            assert call_of[(r.request_id, 0)] < tenth_big, engine.calls[:6]
        assert sorted(engine.ran("big")) == list(range(40))  # every block ran exactly once
        for r, got in zip([big, *smalls], results):
            assert got == engine.rerank(r)

    run(main)


def test_round_robin_takes_one_block_per_request_per_round():
    engine = FakeEngine(docs_per_block=1)

    async def main():
        a, b, c = (req(n, k) for n, k in (("a", 3), ("b", 2), ("c", 1)))
        async with started(engine, max_batch_tokens=30) as sched:
            hold_first_call(engine)
            first = asyncio.create_task(sched.submit(req("first", 1)))
            await until(lambda: len(engine.calls) == 1, "first batch started")
            tasks = []
            for r in (a, b, c):  # one at a time so arrival order is fixed
                tasks.append(asyncio.create_task(sched.submit(r)))
                await until(lambda: sched.queued_requests == len(tasks) + 1, "admitted")
            engine.gate.set()
            await asyncio.gather(first, *tasks)
        assert engine.calls[1:] == [[("a", 0), ("b", 0), ("c", 0)], [("a", 1), ("b", 1), ("a", 2)]]

    run(main)


def test_packing_respects_max_batch_tokens():
    engine = FakeEngine(docs_per_block=1)
    seen = []

    async def main():
        sizes = [40, 30, 30, 50, 150, 20, 60, 60]
        r = req("r", len(sizes), doc_tokens=sizes)
        async with started(engine, max_batch_tokens=100, observer=lambda *a: seen.append(a)) as sched:
            got = await sched.submit(r)
            assert sched.tokens_per_second is not None and sched.tokens_per_second > 0
        assert got == engine.rerank(r)

    run(main)
    # Greedy in order; a block bigger than the budget still runs, alone.
    assert engine.call_tokens[:5] == [[40, 30, 30], [50], [150], [20, 60], [60]]
    assert [(n, t) for n, t, _ in seen] == [(3, 100), (1, 50), (1, 150), (2, 80), (1, 60)]
    assert all(s >= 0 for _, _, s in seen)


def test_observer_object_with_on_batch():
    engine = FakeEngine(docs_per_block=2)

    class Obs:
        def __init__(self):
            self.batches = []

        def on_batch(self, n_blocks, n_tokens, seconds):
            self.batches.append((n_blocks, n_tokens))
            raise RuntimeError("a broken observer must not break scheduling")

    obs = Obs()

    async def main():
        async with started(engine, observer=obs) as sched:
            await sched.submit(req("x", 4))
            await sched.submit(req("y", 1))
            assert sched.running

    run(main)
    assert obs.batches == [(2, 40), (1, 10)]


def test_overload_by_request_count():
    engine = FakeEngine()

    async def main():
        async with started(engine, max_queued_requests=2) as sched:
            await sched.submit(req("warm", 2))  # gives the scheduler a tokens/s estimate
            hold_first_call(engine)
            a = asyncio.create_task(sched.submit(req("a", 1)))
            await until(lambda: len(engine.calls) == 2, "a running")
            b = asyncio.create_task(sched.submit(req("b", 3)))
            await until(lambda: sched.queued_requests == 2, "b admitted")  # a (running) counts too
            with pytest.raises(OverloadedError) as err:
                await sched.submit(req("c", 1))
            assert err.value.retry_after == max(1, math.ceil(sched.queued_tokens / sched.tokens_per_second))
            engine.gate.set()
            await asyncio.gather(a, b)
            assert engine.ran("c") == []
            await sched.submit(req("d", 1))  # room again

    run(main)


def test_overload_by_queued_tokens_and_too_large_requests():
    engine = FakeEngine()

    async def main():
        async with started(engine, max_queued_tokens=500) as sched:
            with pytest.raises(PayloadTooLargeError, match="500"):  # could never fit, even alone
                await sched.submit(req("huge", 60))
            hold_first_call(engine)
            a = asyncio.create_task(sched.submit(req("a", 10)))  # 100 tokens, in flight
            await until(lambda: len(engine.calls) == 1, "a running")
            b = asyncio.create_task(sched.submit(req("b", 30)))  # 300 queued
            await until(lambda: sched.queued_tokens == 300, "b admitted")
            with pytest.raises(OverloadedError) as err:
                await sched.submit(req("c", 30))  # 600 > 500
            assert err.value.retry_after >= 1
            d = asyncio.create_task(sched.submit(req("d", 20)))  # exactly 500: fits
            await until(lambda: sched.queued_tokens == 500, "d admitted")
            engine.gate.set()
            await asyncio.gather(a, b, d)
            assert sched.queued_tokens == 0 and sched.queued_requests == 0

    run(main)


def test_deadline_drops_the_request_and_its_blocks_never_run(clock):
    engine = FakeEngine()

    async def main():
        async with started(engine) as sched:
            with pytest.raises(DeadlineExceededError, match="before it could be queued"):
                await sched.submit(req("late", 2, deadline=clock.now - 1))
            hold_first_call(engine)
            a = asyncio.create_task(sched.submit(req("a", 1)))
            await until(lambda: len(engine.calls) == 1, "a running")
            # Admitted for certain (the scheduler's clock stands still), then failed by the loop's timer
            # 0.02 s later while the worker is still busy with a's batch.
            with pytest.raises(DeadlineExceededError, match="3 of 3 blocks not run"):
                await sched.submit(req("b", 3, deadline=clock.now + 0.02))
            assert sched.queued_tokens == 0 and sched.queued_requests == 1
            engine.gate.set()
            await a
        assert engine.ran("late") == [] and engine.ran("b") == []

    run(main)


def test_worker_skips_an_expired_request_even_if_the_loop_is_late(clock):
    engine = FakeEngine()

    async def main():
        async with started(engine) as sched:
            hold_first_call(engine)
            a = asyncio.create_task(sched.submit(req("a", 1)))
            await until(lambda: len(engine.calls) == 1, "a running")
            # An hour away on the scheduler's clock: the loop's timer for it (an hour of real time) never
            # fires in this test, so only the worker can fail b.
            b = asyncio.create_task(sched.submit(req("b", 3, deadline=clock.now + 3600)))
            await until(lambda: sched.queued_tokens == 30, "b admitted")
            clock.advance(7200)  # the deadline passes while the worker is busy with a's batch
            engine.gate.set()
            with pytest.raises(DeadlineExceededError, match="3 of 3 blocks not run"):
                await b
            await a
        assert engine.ran("b") == []

    run(main)


def test_cancelled_submit_drops_pending_blocks_and_releases_tokens():
    engine = FakeEngine()

    async def main():
        async with started(engine) as sched:
            hold_first_call(engine)
            a = asyncio.create_task(sched.submit(req("a", 1)))
            await until(lambda: len(engine.calls) == 1, "a running")
            b = asyncio.create_task(sched.submit(req("b", 5)))
            await until(lambda: sched.queued_tokens == 50, "b admitted")
            b.cancel()
            with pytest.raises(asyncio.CancelledError):
                await b
            assert sched.queued_tokens == 0 and sched.queued_requests == 1
            engine.gate.set()
            await a
        assert engine.ran("b") == []

    run(main)


def test_cancel_after_some_blocks_ran_stops_the_rest():
    engine = FakeEngine()

    async def main():
        # One block per batch; park the worker inside b's second block, then cancel b.
        async with started(engine, max_batch_tokens=10) as sched:
            engine.hold = lambda blocks: blocks[0].request_id == "b" and blocks[0].index == 1
            hold_first_call(engine)
            b = asyncio.create_task(sched.submit(req("b", 5)))
            await until(lambda: ("b", 1) in {x for c in engine.calls for x in c}, "b's block 1 running")
            b.cancel()
            with pytest.raises(asyncio.CancelledError):
                await b
            assert sched.queued_tokens == 0 and sched.queued_requests == 0
            engine.gate.set()
            engine.hold = None
            await sched.submit(req("c", 1))  # the worker goes on
        assert engine.ran("b") == [0, 1]

    run(main)


def test_model_failure_fails_only_the_request_that_caused_it():
    """A shared batch that fails is rerun one request at a time: only the culprit fails (issue 9)."""
    engine = FakeEngine()

    def fail_if(blocks):
        if any(b.request_id == "boom" for b in blocks):
            return RuntimeError("CUDA error: device-side assert on boom")
        return None

    engine.fail_if = fail_if

    async def main():
        async with started(engine, max_batch_tokens=20) as sched:
            hold_first_call(engine)
            w = asyncio.create_task(sched.submit(req("w", 1)))
            await until(lambda: len(engine.calls) == 1, "w running")
            tasks = []
            for name in ("boom", "x", "y"):
                tasks.append(asyncio.create_task(sched.submit(req(name, 1))))
                await until(lambda: sched.queued_requests == len(tasks) + 1, "admitted")
            engine.gate.set()
            boom, x, y = await asyncio.gather(*tasks, return_exceptions=True)
            # the shared batch, then each of its requests alone, then the next batch
            assert engine.calls[1:] == [[("boom", 0), ("x", 0)], [("boom", 0)], [("x", 0)], [("y", 0)]]
            assert isinstance(boom, ModelError) and "device-side assert on boom" in boom.message
            assert x == engine.rerank(req("x", 1))
            assert y == engine.rerank(req("y", 1))
            assert (await w).request_id == "w"
            assert sched.running and not sched.busy
            z = req("z", 3)
            assert await sched.submit(z) == engine.rerank(z)
            assert sched.queued_tokens == 0 and sched.queued_requests == 0

    run(main)


def test_isolation_keeps_multi_block_requests_whole():
    """A culprit with several blocks in the failed batch fails once; a clean request with several blocks in it
    gets every output, in plan order (FakeEngine.finish checks the order)."""
    engine = FakeEngine()
    engine.fail_if = lambda blocks: ValueError("bad input") if any(b.request_id == "bad" for b in blocks) else None

    async def main():
        async with started(engine, max_batch_tokens=1000) as sched:
            hold_first_call(engine)
            w = asyncio.create_task(sched.submit(req("w", 1)))
            await until(lambda: len(engine.calls) == 1, "w running")
            bad = asyncio.create_task(sched.submit(req("bad", 3)))
            await until(lambda: sched.queued_requests == 2, "bad admitted")
            good = asyncio.create_task(sched.submit(req("good", 3)))
            await until(lambda: sched.queued_requests == 3, "good admitted")
            engine.gate.set()
            with pytest.raises(ModelError, match="bad input"):
                await bad
            got = await good
            await w
            assert engine.calls[1] == [("bad", 0), ("good", 0), ("bad", 1), ("good", 1), ("bad", 2), ("good", 2)]
            assert engine.calls[2:] == [[("bad", 0), ("bad", 1), ("bad", 2)], [("good", 0), ("good", 1), ("good", 2)]]
            assert got == engine.rerank(req("good", 3))

    run(main)


def test_an_invalid_request_error_from_the_engine_stays_the_requests_400():
    engine = FakeEngine()
    engine.fail_if = lambda blocks: InvalidRequestError("marker miscount") if blocks[0].request_id == "bad" else None

    async def main():
        async with started(engine) as sched:
            with pytest.raises(InvalidRequestError, match="marker miscount"):
                await sched.submit(req("bad", 2))
            assert (await sched.submit(req("ok", 2))).request_id == "ok"

    run(main)


def test_a_full_queue_refuses_before_tokenizing():
    """Refusals must be cheap (issue 9): no plan() for a request the queue cannot take, and a request still
    being planned holds its slot."""
    engine = FakeEngine()
    planned: list[str] = []
    real_plan = engine.plan
    engine.plan = lambda request: planned.append(request.query) or real_plan(request)

    async def main():
        async with started(engine, max_queued_requests=2) as sched:
            hold_first_call(engine)
            a = asyncio.create_task(sched.submit(req("a", 1)))
            await until(lambda: len(engine.calls) == 1, "a running")
            engine.plan_gates["b"] = threading.Event()
            b = asyncio.create_task(sched.submit(req("b", 1)))
            await until(lambda: "b" in engine.planning, "b planning")
            assert isinstance(sched.admission_error(), OverloadedError)  # what the API asks before parsing
            with pytest.raises(OverloadedError, match="too many requests queued"):
                await sched.submit(req("c", 1))  # a queued + b planning = 2
            assert planned == ["a", "b"]
            engine.plan_gates["b"].set()
            engine.gate.set()
            await asyncio.gather(a, b)
            assert sched.admission_error() is None
            assert (await sched.submit(req("d", 1))).request_id == "d"
            assert planned == ["a", "b", "d"]

    run(main)


def test_wrong_number_of_outputs_is_reported_not_hung():
    engine = FakeEngine()

    async def main():
        async with started(engine) as sched:
            engine.drop_an_output = True
            with pytest.raises(ModelError, match="This is a bug"):
                await sched.submit(req("a", 2))
            engine.drop_an_output = False
            assert (await sched.submit(req("b", 2))).request_id == "b"

    run(main)


def test_stop_resolves_every_pending_request():
    engine = FakeEngine()

    async def main():
        sched = Scheduler(engine)
        await sched.start()
        hold_first_call(engine)
        tasks = [asyncio.create_task(sched.submit(req("a", 1)))]
        await until(lambda: len(engine.calls) == 1, "a running")
        tasks += [asyncio.create_task(sched.submit(req(n, 2))) for n in ("b", "c")]
        await until(lambda: sched.queued_requests == 3, "b, c admitted")
        stopping = asyncio.create_task(sched.stop())
        # Every caller hears back while the model call is still stuck.
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, OverloadedError) and "shutting down" in r.message for r in results), results
        assert not stopping.done()
        engine.gate.set()
        await stopping
        assert not sched.running and sched.queued_requests == 0 and sched.queued_tokens == 0
        with pytest.raises(OverloadedError):
            await sched.submit(req("d", 1))
        assert engine.calls == [[("a", 0)]]

    run(main)


def test_drain_answers_the_queue_at_once_and_lets_running_requests_finish():
    """SIGTERM's first step (api/lifecycle.py): a request with a block in the model finishes; one with no block
    started, and any that arrives after, hears "shutting down" (503) at once; stop() at the drain's deadline
    does not wait for a worker still inside the model."""
    engine = FakeEngine()

    async def main():
        sched = Scheduler(engine)
        await sched.start()
        hold_first_call(engine)
        running = asyncio.create_task(sched.submit(req("a", 1)))
        await until(lambda: len(engine.calls) == 1, "a running")
        queued = asyncio.create_task(sched.submit(req("b", 2)))
        await until(lambda: sched.queued_requests == 2, "b admitted")
        assert sched.drain(deadline=time.monotonic() + 60) == 1
        with pytest.raises(OverloadedError, match="shutting down") as refused:
            await queued
        assert refused.value.retry_after == 1.0 and not running.done()
        with pytest.raises(OverloadedError, match="shutting down"):
            await sched.submit(req("c", 1))
        assert sched.refused_draining == 2 and not sched.running
        engine.gate.set()
        assert (await running).request_id == "a"  # finished, not failed
        assert engine.calls == [[("a", 0)]]  # b never ran

        hold_first_call(engine)  # a second scheduler, whose running request outlasts the drain
        sched = Scheduler(engine)
        await sched.start()
        late = asyncio.create_task(sched.submit(req("d", 1)))
        await until(lambda: len(engine.calls) == 2, "d running")
        sched.drain(deadline=time.monotonic())
        started = time.monotonic()
        await sched.stop()  # the deadline has passed: answers d, waits for nothing
        assert time.monotonic() - started < GUARD_S / 2 and sched.busy
        with pytest.raises(OverloadedError, match="shutting down"):
            await late
        engine.gate.set()

    run(main)


def test_submit_before_start_is_refused():
    engine = FakeEngine()

    async def main():
        with pytest.raises(OverloadedError, match="not running"):
            await Scheduler(engine).submit(req("a", 1))

    run(main)


def test_invalid_request_is_raised_and_nothing_is_queued():
    engine = FakeEngine()

    async def main():
        async with started(engine) as sched:
            with pytest.raises(InvalidRequestError):
                await sched.submit(RerankRequest(query="", documents=["x"]))
            assert sched.queued_requests == 0 and engine.calls == []

    run(main)


def test_planning_does_not_block_the_event_loop():
    engine = FakeEngine()
    engine.plan_gates["slow"] = threading.Event()

    async def main():
        async with started(engine) as sched:
            slow = asyncio.create_task(sched.submit(req("slow", 2)))
            await until(lambda: "slow" in engine.planning, "slow request tokenizing")
            assert (await sched.submit(req("fast", 2))).request_id == "fast"
            engine.plan_gates["slow"].set()
            assert (await slow).request_id == "slow"

    run(main)


def test_interleaved_results_equal_sequential_execution():
    engine = FakeEngine(docs_per_block=3)

    async def main():
        requests = [
            req(f"q{k}", n, doc_tokens=[5 + (7 * i + k) % 11 for i in range(n)], top_n=top)
            for k, (n, top) in enumerate([(1, None), (7, 3), (20, None), (4, 1), (13, 5), (9, None)])
        ]
        async with started(engine, max_batch_tokens=60) as sched:
            hold_first_call(engine)
            tasks = [asyncio.create_task(sched.submit(req("first", 1)))]
            await until(lambda: len(engine.calls) == 1, "first batch running")
            tasks += [asyncio.create_task(sched.submit(r)) for r in requests]
            await until(lambda: sched.queued_requests == len(tasks), "all admitted")
            engine.gate.set()
            results = await asyncio.gather(*tasks)
        n_calls = len(engine.calls)
        assert any(len({rid for rid, _ in call}) > 1 for call in engine.calls)  # batches mixed requests
        for r, got in zip(requests, results[1:]):
            assert got == engine.rerank(r)
        # Blocks of one request were spread over several calls, not run back to back.
        assert len({n for n, call in enumerate(engine.calls[:n_calls]) for rid, _ in call if rid == "q2"}) > 1

    run(main)
