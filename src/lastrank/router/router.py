"""`RoutedRunner`: one served model backed by several providers, itself a ModelRunner (engine/runner.py), so the
API serves it like any other model (a ServedModel holds it as its scheduler; nothing in api/ routes).

A request goes to the first provider in the model's policy order that its breaker lets through, that has a free
slot under its concurrency cap and whose dialect can carry the request:

    priority    the providers in config order (ordered fallback)
    cheapest    by cost_per_1k_docs, then config order
    latency     by observed latency (smoothed over recent answers; a provider not yet measured goes first, so
                every provider gets measured), then config order

On a provider failure (connect error, timeout, 5xx, 429 (its Retry-After honoured), 408, or 401/402/403/404: see
providers.py) the next provider in that order is tried, each at most once per request, while the request's
deadline (RerankRequest.deadline, --request-timeout-s) lasts; each attempt gets the provider's timeout_s or
what is left of the deadline, whichever is less. The client's own errors (another 4xx) are returned at once.
A 200 is never retried: the answer is in hand; and the router bills nothing itself (the API's handler writes the
one ledger row after submit returns), so a request that failed over is billed exactly once, for the answer the
client got, and a request that failed everywhere is not billed.

Every provider of a model has the same score rule (checked at start: a lastrank provider says its rule in its
/v1/models, any other declares it in the config); mixing rules under one model name is refused, because the
client would see scores of two different scales under one name.

When every provider is out (breakers open, or held by Retry-After), the answer is a 503 with Retry-After: the
soonest time one comes back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from lastrank.engine.backend import Capabilities
from lastrank.engine.runner import ModelRunner
from lastrank.errors import DeadlineExceededError, InvalidRequestError, OverloadedError
from lastrank.router.config import ConfigError, ModelConfig
from lastrank.router.providers import Provider, ProviderFailed
from lastrank.types import RerankRequest, RerankResult

log = logging.getLogger("lastrank.router")


class RoutedRunner(ModelRunner):
    queued_tokens = None  # the providers' queues are their own
    tokens_per_second = None

    def __init__(self, config: ModelConfig, providers: list[Provider], clock=time.monotonic):
        self.config = config
        self.name = config.name
        self.providers = list(providers)
        self.clock = clock
        self.capabilities: Capabilities | None = None
        self.refused_draining = 0
        self._in_flight = 0
        self._started = False
        self._stopped = False
        self._draining = False
        self._drain_deadline: float | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # -- the ModelRunner reads ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._started and not self._stopped

    @property
    def busy(self) -> bool:
        return self._in_flight > 0

    @property
    def queued_requests(self) -> int:
        return self._in_flight

    def admission_error(self) -> OverloadedError | None:
        if self._draining:
            return OverloadedError("the server is shutting down", retry_after=1.0)
        if any(p.breaker.available() for p in self.providers):
            return None
        return self._all_out_error()

    # -- life -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        try:
            await asyncio.gather(*(p.start() for p in self.providers))
            self.capabilities = self._capabilities()
            for p in self.providers:  # a provider learnt later must speak this rule (RemoteProvider.learn)
                p.model_score = self.capabilities.score
        except BaseException:
            await asyncio.gather(*(p.stop() for p in self.providers), return_exceptions=True)
            raise
        self._started = True
        log.info("model %s: %d providers (%s), policy %s, score rule %s", self.name, len(self.providers),
                 ", ".join(p.name for p in self.providers), self.config.policy, self.capabilities.score)

    def _capabilities(self) -> Capabilities:
        rules = {p.name: p.score_rule for p in self.providers if p.score_rule is not None}
        if len(set(rules.values())) > 1:
            raise ConfigError(f"model {self.name!r} mixes score rules ({', '.join(f'{n}: {r}' for n, r in rules.items())}); "
                              "one served model has one score rule: serve them under different names")
        if not rules:
            raise ConfigError(f"model {self.name!r}: no provider's score rule is known (its lastrank providers did "
                              "not answer /v1/models); declare score = \"sigmoid\" or \"cosine\" on them")
        rule = next(iter(rules.values()))
        known = next((p.capabilities for p in self.providers if p.capabilities is not None), None)
        if known is None:
            known = Capabilities(family="remote", architecture="remote providers", listwise=False, score=rule,
                                 raw_score="not returned by remote providers", instruction=False, embedding_dim=None,
                                 context_length=0, max_doc_length=0, max_query_length=0)
        # Images are not sent to remote providers (providers.py), so the model takes them only when all are local.
        images = known.images and all(not p.config.remote for p in self.providers)
        return dataclasses.replace(known, images=images)

    def drain(self, deadline: float | None = None) -> int:
        self._draining = True
        self._drain_deadline = deadline
        answered = 0
        for p in self.providers:
            scheduler = getattr(p, "scheduler", None)  # a LocalProvider's; remote ones queue nothing here
            if scheduler is not None:
                answered += scheduler.drain(deadline)
        return answered

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._in_flight and self._drain_deadline is not None:  # let in-flight remote calls finish, in time
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.0, self._drain_deadline - time.monotonic()))
            except TimeoutError:
                pass
        await asyncio.gather(*(p.stop() for p in self.providers), return_exceptions=True)

    # -- routing --------------------------------------------------------------------------------------------

    def order(self) -> list[Provider]:
        """All providers in the policy's order (module docstring); availability is checked when picking."""
        indexed = list(enumerate(self.providers))
        policy = self.config.policy
        if policy == "cheapest":
            indexed.sort(key=lambda ip: (ip[1].config.cost_per_1k_docs, ip[0]))
        elif policy == "latency":
            indexed.sort(key=lambda ip: (ip[1].latency_s if ip[1].latency_s is not None else -1.0, ip[0]))
        return [p for _, p in indexed]

    async def submit(self, request: RerankRequest) -> RerankResult:
        if self._draining or self._stopped:
            self.refused_draining += 1
            raise OverloadedError("the server is shutting down", retry_after=1.0)
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._route(request)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _route(self, request: RerankRequest) -> RerankResult:
        reasons: list[str] = []
        candidates = []
        for p in self.order():
            why = p.unsupported(request)
            if why is None:
                candidates.append(p)
            else:
                reasons.append(f"{p.name}: {why}")
        if not candidates:
            raise InvalidRequestError(f"no provider of the model {self.name!r} can carry this request: "
                                      + "; ".join(reasons))
        tried: set[str] = set()
        while True:
            remaining = None if request.deadline is None else request.deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceededError(f"the request's deadline passed; providers tried: {_said(reasons)}")
            provider = await self._pick(candidates, tried, remaining)
            if provider is None:
                if not tried:
                    raise self._all_out_error(candidates)
                raise OverloadedError(f"every provider of the model {self.name!r} failed: {_said(reasons)}",
                                      retry_after=self._soonest(candidates))
            tried.add(provider.name)
            timeout_s = provider.config.timeout_s if remaining is None else min(provider.config.timeout_s, remaining)
            started = self.clock()
            try:
                result = await provider.call(request, timeout_s)
            except ProviderFailed as e:
                if e.skip:
                    provider.breaker.release()
                elif e.hold:
                    provider.breaker.hold(e.retry_after)
                elif remaining is not None and timeout_s < provider.config.timeout_s and \
                        time.monotonic() >= request.deadline - 0.05:
                    provider.breaker.release()  # our deadline ran out, not the provider's timeout: no verdict
                else:
                    provider.breaker.failure(e.retry_after)
                    provider.failed += 1
                reasons.append(f"{provider.name}: {e.message}")
                log.warning("request %s: provider %s of %s failed (%s); %s", request.request_id, provider.name,
                            self.name, e.message, "trying the next" if len(tried) < len(candidates) else "none left")
                continue
            except BaseException:  # the client's error, a cancellation, or a 200 we cannot read: no retry
                provider.breaker.release()
                raise
            finally:
                provider.in_flight -= 1
                provider._slots.release()
            provider.breaker.success()
            provider.answered += 1
            provider.observe(self.clock() - started)
            result.provider = provider.name
            return result

    async def _pick(self, candidates: list[Provider], tried: set[str], remaining: float | None) -> Provider | None:
        """The first candidate not yet tried whose breaker lets the request through and that has a free slot;
        when every such one is at its concurrency cap, wait (within the deadline) for the first one's slot."""
        waiting_for = None
        for p in candidates:
            if p.name in tried or not p.breaker.available():
                continue
            if p.full:
                waiting_for = waiting_for or p
                continue
            await p._slots.acquire()  # free, so this does not wait
            if p.breaker.acquire():
                p.in_flight += 1
                return p
            p._slots.release()
        if waiting_for is None:
            return None
        try:
            await asyncio.wait_for(waiting_for._slots.acquire(), remaining)
        except TimeoutError:
            raise DeadlineExceededError(f"every provider of the model {self.name!r} is at its concurrency cap "
                                        "until the request's deadline") from None
        if not waiting_for.breaker.acquire():
            waiting_for._slots.release()
            return await self._pick(candidates, tried | {waiting_for.name}, remaining)
        waiting_for.in_flight += 1
        return waiting_for

    def _soonest(self, providers: list[Provider] | None = None) -> float:
        """Seconds until the first of `providers` may take a request again (at least 1)."""
        now = self.clock()
        waits = [max(p.breaker.open_until if p.breaker.state == "open" else 0.0, p.breaker.held_until) - now
                 for p in (providers or self.providers)]
        return max(1.0, min(waits, default=1.0))

    def _all_out_error(self, providers: list[Provider] | None = None) -> OverloadedError:
        return OverloadedError(f"every provider of the model {self.name!r} is out of service for now (circuit "
                               "breakers open or Retry-After)", retry_after=round(self._soonest(providers), 1))

    def describe(self) -> dict:
        """For /v1/models: the policy and each provider's health, score rule and cost (never a key or a URL)."""
        return {"policy": self.config.policy, "providers": [p.describe() for p in self.providers]}


def _said(reasons: list[str]) -> str:
    return "; ".join(reasons) if reasons else "none"
