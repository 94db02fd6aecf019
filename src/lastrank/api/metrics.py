"""Prometheus metrics, one registry per app (so tests and several apps in one process never clash).

    lastrank_requests_total{route,status}                 every HTTP request on a known route
    lastrank_request_duration_seconds{route,status}       its latency (histogram)
    lastrank_queue_requests / lastrank_queue_tokens       admitted work waiting in the scheduler (read at scrape)
    lastrank_ready                                        1 when the model is loaded and warmed
    lastrank_documents_per_request                        histogram, served requests
    lastrank_tokens_per_document                          histogram of document tokens after truncation
    lastrank_blocks_per_request                           histogram
    lastrank_documents_total, lastrank_prompt_tokens_total
    lastrank_truncated_documents_total, lastrank_truncated_queries_total
    lastrank_engine_batches_total, lastrank_engine_tokens_total, lastrank_engine_seconds_total
    lastrank_engine_tokens_per_second                     EWMA throughput of the model worker
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the route)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_DOC_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 125, 250, 500, 1000, 2500, 5000, 10000)
_TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_BLOCK_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 100)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("lastrank_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("lastrank_request_duration_seconds", "HTTP request latency by route and status",
                                 ["route", "status"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_requests = Gauge("lastrank_queue_requests", "Requests admitted to the scheduler and not finished",
                                    registry=r)
        self.queue_tokens = Gauge("lastrank_queue_tokens", "Tokens of admitted blocks not yet started", registry=r)
        self.ready = Gauge("lastrank_ready", "1 when the model is loaded and warmed up", registry=r)
        self.documents_per_request = Histogram("lastrank_documents_per_request", "Documents per served request",
                                               buckets=_DOC_BUCKETS, registry=r)
        self.tokens_per_document = Histogram("lastrank_tokens_per_document",
                                             "Tokens per document after truncation", buckets=_TOKEN_BUCKETS,
                                             registry=r)
        self.blocks_per_request = Histogram("lastrank_blocks_per_request", "Model blocks per served request",
                                            buckets=_BLOCK_BUCKETS, registry=r)
        self.documents = Counter("lastrank_documents", "Documents ranked", registry=r)
        self.prompt_tokens = Counter("lastrank_prompt_tokens", "Prompt tokens run through the model", registry=r)
        self.truncated_documents = Counter("lastrank_truncated_documents", "Documents truncated to max_doc_length",
                                           registry=r)
        self.truncated_queries = Counter("lastrank_truncated_queries", "Queries truncated to max_query_length",
                                         registry=r)
        self.engine_batches = Counter("lastrank_engine_batches", "Batches run by the model worker", registry=r)
        self.engine_tokens = Counter("lastrank_engine_tokens", "Tokens run by the model worker", registry=r)
        self.engine_seconds = Counter("lastrank_engine_seconds", "Seconds the model worker spent in batches",
                                      registry=r)
        self.engine_tokens_per_second = Gauge("lastrank_engine_tokens_per_second",
                                              "Model throughput (EWMA over recent batches)", registry=r)
        self._scheduler = None
        self._tps: float | None = None

    # -------------------------------------------------------------------------- scheduler hooks

    def attach_scheduler(self, scheduler) -> None:
        self._scheduler = scheduler

    def on_batch(self, n_blocks: int, n_tokens: int, seconds: float) -> None:
        """The scheduler's observer hook (called from its worker thread)."""
        self.engine_batches.inc()
        self.engine_tokens.inc(n_tokens)
        if seconds > 0:
            self.engine_seconds.inc(seconds)
            tps = n_tokens / seconds
            self._tps = tps if self._tps is None else 0.3 * tps + 0.7 * self._tps
            self.engine_tokens_per_second.set(self._tps)

    # -------------------------------------------------------------------------- per request

    def observe_http(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route, str(status)).observe(seconds)

    def observe_usage(self, usage) -> None:
        self.documents_per_request.observe(usage.documents)
        self.blocks_per_request.observe(usage.blocks)
        self.documents.inc(usage.documents)
        self.prompt_tokens.inc(usage.prompt_tokens)
        self.truncated_documents.inc(usage.truncated_documents)
        if usage.query_truncated:
            self.truncated_queries.inc()
        for n in usage.doc_tokens or ():
            self.tokens_per_document.observe(n)

    def render(self) -> bytes:
        s = self._scheduler
        if s is not None:
            self.queue_requests.set(getattr(s, "queued_requests", 0) or 0)
            self.queue_tokens.set(getattr(s, "queued_tokens", 0) or 0)
            tps = getattr(s, "tokens_per_second", None)
            if tps is not None:
                self.engine_tokens_per_second.set(tps)
        return generate_latest(self.registry)
