"""`ModelRunner`: what the API layer drives for one served model, whoever runs the model.

    runner.capabilities                     what the model is (None until start() for a remote one)
    await runner.start(); await runner.stop()
    runner.running                          ready to take requests (the health check reads it)
    runner.admission_error()                the refusal submit() would give right now, without planning
    runner.drain(deadline)                  a graceful stop's start (then stop()); refused_draining counts
    await runner.submit(request)            -> RerankResult, or a domain error (errors.py)
    runner.busy, queued_requests, queued_tokens, tokens_per_second     cheap reads for metrics and health

Three implementations, each declaring the Protocol as a base so the contract is checked where it is written
(tests/engine/test_runner.py checks members and signatures):
  - `engine.scheduler.Scheduler`: the local one, a queue and the worker thread that owns a `Backend`;
  - `api.ray.ModelClient`: a remote one, the ingress's handle on a Ray Serve deployment of replicas (each
    replica runs a Scheduler); it sees no queue of its own, so `queued_tokens` is None ("not known here");
  - the API tests' fakes (tests/api/conftest.py `FakeScheduler`).
`api/` (app.py's lifespan, lifecycle.py's drain, handler.py's readiness, metrics.py's gauges, models.py's
`ServedModel.scheduler`) reads these members directly instead of probing with getattr.

The seam for a router (issue #23): a served model as a set of runners, local or remote. A router is itself a
ModelRunner. Its `capabilities` are its runners' (which must agree); `running` is "any runner is running";
`admission_error()` is None while any runner would admit; `submit` picks a runner that would admit (least
`queued_tokens`, or round robin where a remote runner reports None) and, on a refusal before any work began
(`OverloadedError` from admission, `api.ray.ReplicaFailedError`), tries the next; the gauges are sums.
Nothing in `api/` changes for it: a ServedModel holds one ModelRunner, whichever kind it is.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from lastrank.engine.backend import Capabilities
    from lastrank.errors import OverloadedError
    from lastrank.types import RerankRequest, RerankResult


@runtime_checkable
class ModelRunner(Protocol):
    # Read by the API at any time, from the event loop; each must be cheap and safe from any thread.
    capabilities: Capabilities | None  # None only before start() of a runner that learns it remotely
    running: bool  # started, not stopped, and able to take requests
    busy: bool  # a model call is running right now
    queued_requests: int  # admitted and not yet answered
    queued_tokens: int | None  # tokens admitted and not yet run; None where the runner cannot see its queue
    tokens_per_second: float | None  # recent model throughput; None before the first batch or when not known
    refused_draining: int  # requests answered "shutting down" by drain(), or refused after it
    # A routed model's upstreams (lastrank/router's providers), whose health api/metrics.py exports; () for a
    # runner that is one model.
    providers: Sequence[Any] = ()

    def describe(self) -> dict:
        """What /v1/models adds to this model's entry (a routed model: its policy and each provider's health,
        never a key or URL); nothing by default."""
        return {}

    @abstractmethod
    async def start(self) -> None:
        """Ready to take requests once it returns (a no-op when already started)."""

    @abstractmethod
    async def stop(self) -> None:
        """Answer or fail everything admitted and release what start() took; idempotent."""

    @abstractmethod
    def drain(self, deadline: float | None = None) -> int:
        """The start of a graceful stop (api/lifecycle.py): admit nothing more and answer what has not started
        with OverloadedError("shutting down") at once; `stop()` later answers the rest, waiting no longer
        than `deadline` (a time.monotonic()). Returns how many requests were answered."""

    @abstractmethod
    def admission_error(self) -> OverloadedError | None:
        """The OverloadedError submit() would raise now for any request, or None: a refusal that costs no
        tokenization (a runner that cannot know ahead says None and refuses in submit)."""

    @abstractmethod
    async def submit(self, request: RerankRequest) -> RerankResult:
        """The ranked result, or a domain error (InvalidRequestError, PayloadTooLargeError, OverloadedError,
        DeadlineExceededError, ModelError). Cancelling the call drops the request's pending work."""
