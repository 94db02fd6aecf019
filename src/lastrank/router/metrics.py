"""Per-provider metrics of routed models, read from the providers at scrape time (a prometheus-client collector,
registered on each app's own registry by api/metrics.py)."""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}


class RouterCollector:
    def __init__(self, models: Callable[[], Iterable]):
        self.models = models  # -> the app's ServedModels

    def describe(self):
        return []  # nothing to declare ahead: the providers are known only once the models are attached

    def collect(self):
        from lastrank.router.router import RoutedRunner

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
            runner = m.scheduler
            if not isinstance(runner, RoutedRunner):
                continue
            for p in runner.providers:
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
