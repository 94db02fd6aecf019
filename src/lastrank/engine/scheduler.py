"""The async block queue between the API and the model: admission, fairness, deadlines, cancellation.

One worker thread owns the model. `submit` plans a request off the event loop, admits it (or raises
`OverloadedError`), and waits; the worker takes blocks round-robin across admitted requests (one
block per request per round, in arrival order, rounds continuing until the token budget is full),
runs them with one `backend.run_blocks` call, and hands each output back to its request. When a
request has every output, `submit` calls `backend.finish` in a helper thread, so the worker goes
straight on to the next batch.

Isolation: when a batch holding blocks of several requests fails, each request's blocks are rerun on
their own, so only a request whose own blocks fail is failed (one client's hostile input never fails
another's request). Admission happens before tokenizing: a full queue refuses a request at once, and a
request being planned holds its queue slot, so refusals under overload cost next to nothing.

Invariant: every admitted request leaves the queue exactly once, through `_complete_locked`, which
resolves its future. Model failures, deadlines, cancellation, `drain()`, `stop()` and scheduler bugs all
go through it, so no caller can wait forever (Infinity's worker dies with futures pending; ours may not).

Graceful stop (SIGTERM, api/lifecycle.py): `drain()` admits nothing more and answers the requests whose
blocks have not started with a 503 "shutting down" at once; those already running go on; `stop()` at the
drain's deadline answers what is left with the same 503.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from typing import Any, Callable

from lastrank.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    LastrankError,
    ModelError,
    OverloadedError,
    PayloadTooLargeError,
)
from lastrank.engine.runner import ModelRunner
from lastrank.types import RerankRequest, RerankResult

log = logging.getLogger(__name__)

# What a request hears when the server stops before its blocks run (a 503 with Retry-After: the client retries,
# on another replica or once this one is back).
SHUTTING_DOWN = "the server is shutting down; retry"

# Weight of the newest batch in the tokens/s estimate: recent enough to follow a change of load,
# smooth enough that one odd batch does not swing `retry_after`.
_EWMA_ALPHA = 0.3


class _Entry:
    """One admitted request. Mutable fields are guarded by the scheduler's lock."""

    __slots__ = ("plan", "blocks", "deadline", "loop", "future", "next_block", "pending_tokens",
                 "outputs", "received", "done")

    def __init__(self, plan, loop: asyncio.AbstractEventLoop):
        self.plan = plan
        self.blocks = list(plan.blocks)
        self.deadline: float | None = plan.request.deadline
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()
        self.next_block = 0  # position in plan.blocks of the next block to start
        self.pending_tokens = sum(b.n_tokens for b in self.blocks)  # tokens of blocks not started
        self.outputs: list[Any] = [None] * len(self.blocks)
        self.received = 0
        self.done = False

    @property
    def request_id(self) -> str:
        return self.plan.request.request_id


def _set_future(fut: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    # Runs on the request's event loop; the caller may have been cancelled meanwhile.
    if fut.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        fut.cancel()
    elif exc is not None:
        fut.set_exception(exc)
        # Marked retrieved: when its caller was cancelled meanwhile, nobody will read it, and asyncio would
        # print "Future exception was never retrieved" at exit for an error that was never anyone's.
        fut.exception()
    else:
        fut.set_result(result)


class Scheduler(ModelRunner):
    """Admission, round-robin packing and the worker thread that owns the model: the local ModelRunner.

    Read by metrics and health checks (all cheap, safe from any thread):
      `queued_requests`   admitted requests not yet finished (waiting, or with blocks running)
      `queued_tokens`     tokens of admitted blocks not yet started
      `running`           started, not stopped, and the worker thread alive
      `busy`              a batch is inside `backend.run_blocks` right now
      `tokens_per_second` EWMA of model throughput over recent batches (None before the first)

    `observer`, if given, hears about each batch that ran successfully, from the worker thread:
    either a callable `observer(n_blocks, n_tokens, seconds)` or an object with a method
    `on_batch(n_blocks, n_tokens, seconds)`. Its exceptions are logged and ignored.
    """

    def __init__(
        self,
        backend,
        *,
        max_batch_tokens: int = 16384,
        max_queued_tokens: int = 2_000_000,
        max_queued_requests: int = 256,
        observer: Any = None,
    ):
        for name, value in (("max_batch_tokens", max_batch_tokens), ("max_queued_tokens", max_queued_tokens),
                            ("max_queued_requests", max_queued_requests)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.backend = backend  # any engine.backend.Backend (the scheduler sees only plan/run_blocks/finish)
        self.max_batch_tokens = max_batch_tokens
        self.max_queued_tokens = max_queued_tokens
        self.max_queued_requests = max_queued_requests
        self._on_batch: Callable[[int, int, float], Any] | None = getattr(observer, "on_batch", None) or observer
        if self._on_batch is not None and not callable(self._on_batch):
            raise TypeError("observer must be a callable or have an on_batch(n_blocks, n_tokens, seconds) method")

        self._cond = threading.Condition()
        self._entries: dict[_Entry, None] = {}  # every admitted, unfinished request (insertion order)
        self._ready: collections.deque[_Entry] = collections.deque()  # entries with blocks not started
        self._queued_tokens = 0
        self._planning = 0  # submits holding a queue slot while they tokenize
        self._tokens_per_second: float | None = None
        self._busy = False
        self._accepting = False
        self._stopping = False
        self._drain_deadline: float | None = None  # set by drain(): stop() waits for the worker until then only
        self.refused_draining = 0  # requests answered SHUTTING_DOWN by drain(), or refused after it
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------- introspection

    @property
    def capabilities(self):
        """The served model's Capabilities (what the API shows and validates against)."""
        return self.backend.capabilities

    @property
    def queued_requests(self) -> int:
        return len(self._entries)

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    @property
    def running(self) -> bool:
        return self._accepting and self._thread is not None and self._thread.is_alive()

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def tokens_per_second(self) -> float | None:
        return self._tokens_per_second

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the worker thread. A no-op if already running."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                if self._stopping:
                    # stop() gave up waiting on a hung batch; a second worker would share the model.
                    raise RuntimeError("the previous worker is still running a batch; cannot restart yet")
                return
            self._stopping = False
            self._drain_deadline = None
            self._accepting = True
            self._thread = threading.Thread(target=self._worker, name="lastrank-scheduler", daemon=True)
            self._thread.start()

    def drain(self, deadline: float | None = None) -> int:
        """The start of a graceful stop: admit nothing more, and answer every admitted request none of whose
        blocks has started with `OverloadedError` (SHUTTING_DOWN: a 503 + Retry-After) at once. Requests with
        blocks started go on running; `stop()` answers whatever is left. `deadline` (a time.monotonic()) is
        the drain's end: a later `stop()` waits for the worker no longer than that. Returns how many
        requests were answered."""
        with self._cond:
            self._accepting = False
            self._drain_deadline = deadline
            queued = [entry for entry in self._entries if entry.next_block == 0]
            for entry in queued:
                self._complete_locked(entry, exc=OverloadedError(SHUTTING_DOWN, retry_after=1.0))
            self.refused_draining += len(queued)
            return len(queued)

    async def stop(self, timeout: float | None = 30.0) -> None:
        """Fail everything admitted with `OverloadedError` ("shutting down"), then wait for the worker.

        Requests are failed at once, even those whose blocks are running: the current batch is
        allowed to end (a model call cannot be interrupted) but its outputs are dropped. Waits at
        most `timeout` seconds for that batch (after `drain()`, at most until its deadline); the
        thread is a daemon, so a hung model cannot keep the process alive. Idempotent.
        """
        with self._cond:
            self._accepting = False
            self._stopping = True
            for entry in list(self._entries):
                self._complete_locked(entry, exc=OverloadedError(SHUTTING_DOWN, retry_after=1.0))
            self._cond.notify_all()
            thread = self._thread
            drain_deadline = self._drain_deadline
        if drain_deadline is not None:
            left = max(0.0, drain_deadline - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
        if thread is not None and thread is not threading.current_thread():
            if timeout is None or timeout > 0:
                await asyncio.to_thread(thread.join, timeout)
            if thread.is_alive() and drain_deadline is None:  # (a drain reports its own end)
                log.warning("scheduler worker still inside run_blocks after %.1fs; leaving it (daemon)", timeout)

    # ----------------------------------------------------------------------------- submit

    async def submit(self, request: RerankRequest) -> RerankResult:
        """Plan, admit, wait for every block, finish.

        Raises `InvalidRequestError` (from `backend.plan`), `PayloadTooLargeError` (the request alone
        exceeds `max_queued_tokens`, so it could never be admitted), `OverloadedError` (queue full,
        or the scheduler is not running), `DeadlineExceededError`, `ModelError`.
        """
        if not self.running:
            raise self._not_accepting()
        # Refuse before tokenizing: under overload a refusal must cost next to nothing, or refused
        # requests eat the CPU the admitted ones need. A request being planned holds a queue slot.
        self._reserve()
        try:
            # Tokenizing thousands of documents takes a while; the loop must keep serving other requests.
            plan = await asyncio.to_thread(self.backend.plan, request)
            if not plan.blocks:
                return await asyncio.to_thread(self.backend.finish, plan, [])
            entry = self._admit(plan)
        finally:
            with self._cond:
                self._planning -= 1
        try:
            if entry.deadline is not None:
                # Fire at the deadline even while the worker is busy with a long batch, so the
                # caller hears back on time; the worker also checks before starting any block.
                remaining = entry.deadline - time.monotonic()
                done, _ = await asyncio.wait({entry.future}, timeout=max(0.0, remaining))
                if not done:
                    with self._cond:
                        self._complete_locked(entry, exc=self._deadline_error(entry))
            outputs = await entry.future
        except BaseException:
            # Cancelled (client gone) or failed: drop blocks not yet started and release their tokens.
            # A no-op when the entry already completed.
            with self._cond:
                self._complete_locked(entry, exc=asyncio.CancelledError())
            raise
        return await asyncio.to_thread(self.backend.finish, entry.plan, outputs)

    def admission_error(self) -> OverloadedError | None:
        """The error a new request would be refused with right now, or None. Cheap: the API calls it
        before reading a request (api/admission.py), so a refusal under overload costs almost nothing."""
        with self._cond:
            return self._refusal_locked()

    def _refusal_locked(self) -> OverloadedError | None:
        taken = len(self._entries) + self._planning
        if taken >= self.max_queued_requests:
            return OverloadedError(f"too many requests queued ({taken}, max {self.max_queued_requests})",
                                   retry_after=self._retry_after_locked())
        if self._queued_tokens >= self.max_queued_tokens:
            return OverloadedError(f"too many tokens queued ({self._queued_tokens}, max {self.max_queued_tokens})",
                                   retry_after=self._retry_after_locked())
        return None

    def _reserve(self) -> None:
        with self._cond:
            refusal = self._refusal_locked()
            if refusal is not None:
                raise refusal
            self._planning += 1

    def _admit(self, plan) -> _Entry:
        tokens = sum(b.n_tokens for b in plan.blocks)
        if tokens > self.max_queued_tokens:
            raise PayloadTooLargeError(
                f"the request needs {tokens} tokens, more than this server can queue "
                f"(max_queued_tokens={self.max_queued_tokens}); send fewer or shorter documents"
            )
        deadline = plan.request.deadline
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceededError("the request's deadline passed before it could be queued")
        entry = _Entry(plan, asyncio.get_running_loop())
        with self._cond:
            if not self._accepting:
                raise self._not_accepting()
            # This request's own planning slot is still counted in _planning, hence the 1.
            if len(self._entries) + self._planning - 1 >= self.max_queued_requests:
                raise OverloadedError(
                    f"too many requests queued ({len(self._entries)}, max {self.max_queued_requests})",
                    retry_after=self._retry_after_locked(),
                )
            if self._queued_tokens + tokens > self.max_queued_tokens:
                raise OverloadedError(
                    f"too many tokens queued ({self._queued_tokens} + {tokens} requested, "
                    f"max {self.max_queued_tokens})",
                    retry_after=self._retry_after_locked(),
                )
            self._entries[entry] = None
            self._ready.append(entry)
            self._queued_tokens += tokens
            self._cond.notify()
        return entry

    def _not_accepting(self) -> OverloadedError:
        if self._stopping or self._drain_deadline is not None:
            if self._drain_deadline is not None:
                self.refused_draining += 1  # (an int += under the GIL; a count for the drain's line only)
            return OverloadedError(SHUTTING_DOWN, retry_after=1.0)
        return OverloadedError("the scheduler is not running", retry_after=1.0)

    def _retry_after_locked(self) -> float:
        # Time to drain what is queued now at the observed rate; at least 1 s, 1 s before any data.
        tps = self._tokens_per_second
        if not tps:
            return 1.0
        return float(max(1, math.ceil(self._queued_tokens / tps)))

    @staticmethod
    def _deadline_error(entry: _Entry) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"the deadline passed with {len(entry.blocks) - entry.received} of {len(entry.blocks)} blocks not run"
        )

    # ----------------------------------------------------------------------------- the one exit

    def _complete_locked(self, entry: _Entry, result: Any = None, exc: BaseException | None = None) -> None:
        """Take `entry` out of the queue and resolve its future. Idempotent; caller holds the lock."""
        if entry.done:
            return
        entry.done = True
        self._entries.pop(entry, None)
        try:
            self._ready.remove(entry)
        except ValueError:
            pass  # all its blocks had started
        self._queued_tokens -= entry.pending_tokens
        entry.pending_tokens = 0
        entry.outputs = []  # drop references to outputs nobody will read
        try:
            entry.loop.call_soon_threadsafe(_set_future, entry.future, result, exc)
        except RuntimeError:
            pass  # the caller's loop is closed: nobody is waiting

    # ----------------------------------------------------------------------------- worker thread

    def _worker(self) -> None:
        try:
            while True:
                batch: list[tuple[_Entry, int, Any]] = []
                try:
                    with self._cond:
                        while not self._stopping and not self._ready:
                            self._cond.wait()
                        if self._stopping:
                            return
                        batch = self._take_batch_locked(time.monotonic())
                    if batch:
                        self._run_batch(batch)
                except Exception as exc:  # a bug in this file: fail everyone rather than hang anyone
                    log.exception("scheduler worker error")
                    with self._cond:
                        self._busy = False
                        for entry in list(self._entries):
                            self._complete_locked(entry, exc=ModelError(
                                f"internal scheduler error: {type(exc).__name__}: {exc}. This is a bug."))
        finally:
            # Whatever ended the thread, nobody may be left waiting on it.
            with self._cond:
                self._busy = False
                self._accepting = False
                for entry in list(self._entries):
                    self._complete_locked(entry, exc=OverloadedError(SHUTTING_DOWN, retry_after=1.0))

    def _take_batch_locked(self, now: float) -> list[tuple[_Entry, int, Any]]:
        """Pop blocks round-robin until the next one would exceed the token budget (at least one)."""
        batch: list[tuple[_Entry, int, Any]] = []
        tokens = 0
        while self._ready:
            entry = self._ready[0]
            if entry.deadline is not None and now >= entry.deadline:
                self._complete_locked(entry, exc=self._deadline_error(entry))  # removes it from _ready
                continue
            pos = entry.next_block
            block = entry.blocks[pos]
            if batch and tokens + block.n_tokens > self.max_batch_tokens:
                break  # it stays at the front: first in the next batch
            self._ready.popleft()
            entry.next_block += 1
            entry.pending_tokens -= block.n_tokens
            self._queued_tokens -= block.n_tokens
            if entry.next_block < len(entry.blocks):
                self._ready.append(entry)  # back of the round
            batch.append((entry, pos, block))
            tokens += block.n_tokens
        self._busy = bool(batch)
        return batch

    def _run_batch(self, batch: list[tuple[_Entry, int, Any]]) -> None:
        blocks = [block for _, _, block in batch]
        n_tokens = sum(b.n_tokens for b in blocks)
        start = time.perf_counter()
        try:
            outputs = self._run_blocks(blocks)
        except Exception as exc:
            failure: Exception | None = exc
        else:
            failure = None
        if failure is not None:
            if len(dict.fromkeys(e for e, _, _ in batch)) > 1:
                log.warning("run_blocks failed on a batch of %d blocks (%s: %s); rerunning each request's "
                            "blocks alone", len(blocks), type(failure).__name__, failure)
                self._run_isolated(batch)
            else:
                self._fail_batch(batch, failure)
            return
        seconds = time.perf_counter() - start

        with self._cond:
            self._busy = False
            if seconds > 0:
                rate = n_tokens / seconds
                prev = self._tokens_per_second
                self._tokens_per_second = rate if prev is None else _EWMA_ALPHA * rate + (1 - _EWMA_ALPHA) * prev
            for (entry, pos, _), output in zip(batch, outputs):
                if entry.done:
                    continue  # cancelled, expired or stopped while its block ran
                entry.outputs[pos] = output
                entry.received += 1
                if entry.received == len(entry.blocks):
                    self._complete_locked(entry, result=entry.outputs)

        if self._on_batch is not None:
            try:
                self._on_batch(len(blocks), n_tokens, seconds)
            except Exception:
                log.exception("scheduler observer failed; ignored")

    def _fail_batch(self, batch: list[tuple[_Entry, int, Any]], exc: Exception) -> None:
        blocks = len(batch)
        log.error("run_blocks failed on %d blocks of request %s", blocks, batch[0][0].request_id, exc_info=exc)
        cause = exc.message if isinstance(exc, LastrankError) else f"{type(exc).__name__}: {exc}"
        with self._cond:
            self._busy = False
            for entry in dict.fromkeys(e for e, _, _ in batch):
                if isinstance(exc, InvalidRequestError):
                    # The engine found something wrong with this request's own input: its 400, as is.
                    error: LastrankError = type(exc)(exc.message)
                else:
                    # One exception object per request: they are raised in different tasks.
                    error = ModelError(f"the model failed on {blocks} blocks of this request: {cause}")
                error.__cause__ = exc
                self._complete_locked(entry, exc=error)

    def _run_blocks(self, blocks: list) -> list:
        outputs = self.backend.run_blocks(blocks)
        if outputs is None or len(outputs) != len(blocks):
            raise ModelError(
                f"run_blocks returned {None if outputs is None else len(outputs)} outputs "
                f"for {len(blocks)} blocks. This is a bug."
            )
        return outputs

    def _run_isolated(self, batch: list[tuple[_Entry, int, Any]]) -> None:
        """A shared batch failed: rerun it one request at a time, so only a request whose own blocks fail
        is failed (one request's hostile input must not fail the others batched with it)."""
        by_entry: dict[_Entry, list[tuple[_Entry, int, Any]]] = {}
        for item in batch:
            by_entry.setdefault(item[0], []).append(item)
        for entry, items in by_entry.items():
            if entry.done:
                continue  # cancelled, expired or stopped meanwhile
            with self._cond:
                self._busy = True
            self._run_batch(items)  # one request: it succeeds, or fails alone
        with self._cond:
            self._busy = False
