"""Prometheus metrics, one registry per app (so tests and several apps in one process never clash).

    lastrank_requests_total{route,status}                 every HTTP request on a known route
    lastrank_request_duration_seconds{route,status}       its latency (histogram)
    lastrank_queue_requests{model} / lastrank_queue_tokens{model}
                                                          admitted work waiting in that model's scheduler (read at scrape)
    lastrank_ready{model}                                 1 when the model is loaded and warmed
    lastrank_documents_per_request{model}                 histogram, served requests
    lastrank_tokens_per_document{model}                   histogram of document tokens after truncation
    lastrank_blocks_per_request{model}                    histogram
    lastrank_documents_total{model}, lastrank_prompt_tokens_total{model}
    lastrank_truncated_documents_total{model}, lastrank_truncated_queries_total{model}
    lastrank_engine_batches_total{model}, lastrank_engine_tokens_total{model}, lastrank_engine_seconds_total{model}
    lastrank_engine_tokens_per_second{model}              the scheduler's throughput estimate (its EWMA; read at scrape)
"""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the route)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_DOC_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 125, 250, 500, 1000, 2500, 5000, 10000)
_TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_BLOCK_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 100)


class _BatchObserver:
    """The scheduler's observer for one model (called from its worker thread)."""

    def __init__(self, metrics: "Metrics", model: str):
        self.metrics, self.model = metrics, model

    def on_batch(self, n_blocks: int, n_tokens: int, seconds: float) -> None:
        m = self.metrics
        m.engine_batches.labels(self.model).inc()
        m.engine_tokens.labels(self.model).inc(n_tokens)
        if seconds > 0:
            m.engine_seconds.labels(self.model).inc(seconds)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry(auto_describe=True)
        M = ["model"]
        self.requests = Counter("lastrank_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("lastrank_request_duration_seconds", "HTTP request latency by route and status",
                                 ["route", "status"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_requests = Gauge("lastrank_queue_requests", "Requests admitted to the scheduler and not finished",
                                    M, registry=r)
        self.queue_tokens = Gauge("lastrank_queue_tokens", "Tokens of admitted blocks not yet started", M, registry=r)
        self.ready = Gauge("lastrank_ready", "1 when the model is loaded and warmed up", M, registry=r)
        self.documents_per_request = Histogram("lastrank_documents_per_request", "Documents per served request", M,
                                               buckets=_DOC_BUCKETS, registry=r)
        self.tokens_per_document = Histogram("lastrank_tokens_per_document",
                                             "Tokens per document after truncation", M, buckets=_TOKEN_BUCKETS,
                                             registry=r)
        self.blocks_per_request = Histogram("lastrank_blocks_per_request", "Model blocks per served request", M,
                                            buckets=_BLOCK_BUCKETS, registry=r)
        self.documents = Counter("lastrank_documents", "Documents ranked", M, registry=r)
        self.prompt_tokens = Counter("lastrank_prompt_tokens", "Prompt tokens run through the model", M, registry=r)
        self.truncated_documents = Counter("lastrank_truncated_documents", "Documents truncated to max_doc_length",
                                           M, registry=r)
        self.truncated_queries = Counter("lastrank_truncated_queries", "Queries truncated to max_query_length",
                                         M, registry=r)
        self.engine_batches = Counter("lastrank_engine_batches", "Batches run by the model worker", M, registry=r)
        self.engine_tokens = Counter("lastrank_engine_tokens", "Tokens run by the model worker", M, registry=r)
        self.engine_seconds = Counter("lastrank_engine_seconds", "Seconds the model worker spent in batches", M,
                                      registry=r)
        self.engine_tokens_per_second = Gauge("lastrank_engine_tokens_per_second",
                                              "Model throughput (the scheduler's EWMA over recent batches)", M,
                                              registry=r)
        self._models: list = []  # ServedModel entries, read at scrape
        r.register(ProviderCollector(lambda: self._models))  # routed models' providers (lastrank/router); none: nothing

    # -------------------------------------------------------------------------- models and schedulers

    def attach_models(self, models) -> None:
        self._models = list(models)
        for m in self._models:
            self.ready.labels(m.name).set(0)

    def observer(self, model: str) -> _BatchObserver:
        return _BatchObserver(self, model)

    # -------------------------------------------------------------------------- per request

    def observe_http(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route, str(status)).observe(seconds)

    def observe_usage(self, model: str, usage) -> None:
        self.documents_per_request.labels(model).observe(usage.documents)
        self.blocks_per_request.labels(model).observe(usage.blocks)
        self.documents.labels(model).inc(usage.documents)
        self.prompt_tokens.labels(model).inc(usage.prompt_tokens)
        self.truncated_documents.labels(model).inc(usage.truncated_documents)
        if usage.query_truncated:
            self.truncated_queries.labels(model).inc()
        hist = self.tokens_per_document.labels(model)
        for n in usage.doc_tokens or ():
            hist.observe(n)

    def render(self) -> bytes:
        for m in self._models:
            self.ready.labels(m.name).set(1 if m.ready else 0)
            s = m.scheduler
            if s is None:
                continue
            self.queue_requests.labels(m.name).set(s.queued_requests)
            if s.queued_tokens is not None:  # None: a remote runner, whose queue is its replicas' own
                self.queue_tokens.labels(m.name).set(s.queued_tokens)
            if s.tokens_per_second is not None:
                self.engine_tokens_per_second.labels(m.name).set(s.tokens_per_second)
        return generate_latest(self.registry)


STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}


class ProviderCollector:
    """Per-provider metrics of routed models (lastrank/router), read from each runner's `providers` at scrape
    time; a model that is not routed has none."""

    def __init__(self, models: Callable[[], Iterable]):
        self.models = models  # -> the app's ServedModels

    def describe(self):
        return []  # nothing to declare ahead: the providers are known only once the models are attached

    def collect(self):
        labels = ["model", "provider"]
        state = GaugeMetricFamily("lastrank_router_provider_state",
                                  "Circuit breaker state of a routed model's provider: 0 closed, 1 half-open, 2 open",
                                  labels=labels)
        held = GaugeMetricFamily("lastrank_router_provider_held",
                                 "1 while the provider's Retry-After keeps requests away from it", labels=labels)
        in_flight = GaugeMetricFamily("lastrank_router_provider_in_flight", "Requests in flight to the provider",
                                      labels=labels)
        latency = GaugeMetricFamily("lastrank_router_provider_latency_seconds",
                                    "Smoothed latency of the provider's successful answers", labels=labels)
        answered = CounterMetricFamily("lastrank_router_provider_answered", "Requests the provider answered",
                                       labels=labels)
        failed = CounterMetricFamily("lastrank_router_provider_failures",
                                     "Provider failures (connect error, timeout, 5xx, ...), each retried elsewhere",
                                     labels=labels)
        opened = CounterMetricFamily("lastrank_router_provider_breaker_opened", "Times the provider's breaker opened",
                                     labels=labels)
        probes = CounterMetricFamily("lastrank_router_provider_probes",
                                     "Background health probes of an open remote provider, by result (ok: it "
                                     "answered and its breaker closed; failed: still down)",
                                     labels=[*labels, "result"])
        for m in self.models():
            for p in (m.scheduler.providers if m.scheduler is not None else ()):
                values = [m.name, p.name]
                b = p.breaker
                state.add_metric(values, STATE_VALUE[b.state])
                held.add_metric(values, 1 if b.clock() < b.held_until else 0)
                in_flight.add_metric(values, p.in_flight)
                if p.latency_s is not None:
                    latency.add_metric(values, p.latency_s)
                answered.add_metric(values, p.answered)
                failed.add_metric(values, p.failed)
                opened.add_metric(values, b.opened)
                if getattr(p, "config", None) is not None and p.config.remote and hasattr(p, "probes"):
                    probes.add_metric([*values, "ok"], p.probes - p.probes_failed)
                    probes.add_metric([*values, "failed"], p.probes_failed)
        yield from (state, held, in_flight, latency, answered, failed, opened, probes)
