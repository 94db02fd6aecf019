"""The router's parts with fakes, fast: config errors, the breaker, the policies, failover and what is never
retried, and each dialect's translation against a real lastrank app (in process) speaking it."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from lastrank.engine.backend import Capabilities
from lastrank.engine.runner import ModelRunner
from lastrank.errors import DeadlineExceededError, InvalidRequestError, ModelError, OverloadedError
from lastrank.router import ConfigError, parse_config
from lastrank.router.breaker import Breaker
from lastrank.router.config import ModelConfig, ProviderConfig
from lastrank.router.providers import Provider, ProviderFailed, RemoteProvider, parse_retry_after
from lastrank.router.router import RoutedRunner
from lastrank.types import RankedDocument, RerankOptions, RerankRequest, RerankResult, Usage

SECRET = "sk-upstream-secret-0123456789"

CAPS = Capabilities(family="toy", architecture="toy", listwise=False, score="cosine", raw_score="cosine",
                    instruction=False, embedding_dim=2, context_length=512, max_doc_length=256, max_query_length=64)

QUERY = "alpha beta gamma delta"
DOCS = ["alpha", "alpha beta", "nothing here", "alpha beta gamma"]  # overlap 1, 2, 0, 3 words: no ties


def toy(query, doc):
    return len(set(query.split()) & set(doc.split())) / len(set(query.split()))


# -- config ----------------------------------------------------------------------------------------------------

GOOD = """
[[models]]
name = "rerank"
policy = "cheapest"
price_per_1k_docs = 0.25
[[models.providers]]
name = "a"
dialect = "lastrank"
base_url = "http://127.0.0.1:9000/"
api_key_env = "A_KEY"
[[models.providers]]
name = "b"
dialect = "tei"
base_url = "http://127.0.0.1:9001"
score = "sigmoid"
cost_per_1k_docs = 0.5
"""


def test_config_reads_a_good_file():
    c = parse_config(GOOD)
    m = c.models[0]
    assert (m.name, m.policy, [p.name for p in m.providers]) == ("rerank", "cheapest", ["a", "b"])
    assert m.providers[0].base_url == "http://127.0.0.1:9000" and m.providers[0].api_key_env == "A_KEY"
    assert m.providers[1].cost_per_1k_docs == 0.5 and m.providers[1].score == "sigmoid"
    assert m.price_per_1k_docs == 0.25  # the client's price; absent, None (--price-per-1k-docs applies)
    assert parse_config(GOOD.replace("price_per_1k_docs = 0.25\n", "")).models[0].price_per_1k_docs is None
    assert parse_config(GOOD.replace("price_per_1k_docs = 0.25", "price_per_1k_docs = 0")).models[0].price_per_1k_docs == 0


@pytest.mark.parametrize("edit, named", [
    (lambda t: t.replace('policy = "cheapest"', 'policy = "random"'), "models[0].policy"),
    (lambda t: t.replace('cost_per_1k_docs = 0.5', 'cost_per_1k_docs = -1'), "models[0].providers[1].cost_per_1k_docs"),
    (lambda t: t.replace('price_per_1k_docs = 0.25', 'price_per_1k_docs = -0.01'), "models[0].price_per_1k_docs: must be a number >= 0"),
    (lambda t: t.replace('price_per_1k_docs = 0.25', 'price_per_1k_docs = "0.25"'), "models[0].price_per_1k_docs: must be a number >= 0"),
    (lambda t: t.replace('price_per_1k_docs = 0.25', 'price_per_1k_docs = nan'), "models[0].price_per_1k_docs"),
    (lambda t: t.replace('price_per_1k_docs = 0.25', 'price_per_1k_docs = 1e-10'), "models[0].price_per_1k_docs: it has more than 9 decimals"),
    (lambda t: t.replace('cost_per_1k_docs = 0.5', 'cost_per_1k_docs = 5e9'), "models[0].providers[1].cost_per_1k_docs: it must be at most"),
    (lambda t: t.replace('cost_per_1k_docs = 0.5', 'cost_per_1k_docs = 0.5\nprice_per_1k_docs = 1'), "models[0].providers[1].price_per_1k_docs: unknown key"),
    (lambda t: t.replace('api_key_env = "A_KEY"', f'api_key = "{SECRET}"'), "models[0].providers[0].api_key"),
    (lambda t: t.replace('api_key_env = "A_KEY"', f'api_key_env = "{SECRET}-"'), "models[0].providers[0].api_key_env"),
    (lambda t: t.replace('score = "sigmoid"\n', ''), "models[0].providers[1].score"),
    (lambda t: t.replace('"http://127.0.0.1:9001"', '"http://user:pw@127.0.0.1:9001"'), "models[0].providers[1].base_url"),
    (lambda t: t.replace('"http://127.0.0.1:9001"', '"http://127.0.0.1:9001/?key=x"'), "models[0].providers[1].base_url"),
    (lambda t: t.replace('"http://127.0.0.1:9001"', '"ftp://127.0.0.1"'), "models[0].providers[1].base_url"),
    (lambda t: t.replace('name = "b"', 'name = "a"'), "models[0].providers[1].name"),
    (lambda t: t.replace('dialect = "tei"', 'dialect = "soap"'), "models[0].providers[1].dialect"),
    (lambda t: t + 'colour = "red"\n', "models[0].providers[1].colour"),
    (lambda t: t.replace('dialect = "lastrank"', 'dialect = "lastrank"\nscore = "cosine"'), "models[0]: its providers declare different score rules"),
    (lambda t: "models = 3", "models: must be"),
    (lambda t: "[[models]\n", "not valid TOML"),
])
def test_config_errors_name_the_key(edit, named):
    with pytest.raises(ConfigError) as e:
        parse_config(edit(GOOD), source="router.toml")
    assert f"router.toml: {named}" in e.value.message
    assert SECRET not in e.value.message  # a key pasted in the wrong place is not echoed


# -- breaker ---------------------------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_breaker_opens_after_the_threshold_and_a_probe_closes_it():
    clock = Clock()
    b = Breaker(failure_threshold=2, cooldown_s=5.0, clock=clock)
    assert b.acquire() and b.state == "closed"
    b.failure()
    assert b.state == "closed" and b.available()
    b.success()  # a success resets the count: failures must be in a row
    b.failure()
    b.failure()
    assert b.state == "open" and not b.available() and not b.acquire() and b.opened == 1
    clock.t += 4.9
    assert b.state == "open"
    clock.t += 0.2
    assert b.state == "half_open" and b.acquire()  # the probe
    assert not b.available() and not b.acquire()  # one probe at a time
    b.failure()  # a failed probe opens it again at once
    assert b.state == "open" and b.opened == 2
    clock.t += 5.1
    assert b.acquire()
    b.success()
    assert b.state == "closed" and b.closed_again == 1 and b.available()


def test_breaker_hold_is_not_a_failure_and_a_released_probe_frees_the_slot():
    clock = Clock()
    b = Breaker(failure_threshold=1, cooldown_s=5.0, clock=clock)
    b.hold(2.0)
    assert not b.available() and b.state == "closed"
    clock.t += 2.0
    assert b.available()
    b.failure()
    clock.t += 5.0
    assert b.acquire() and not b.available()
    b.release()  # the probe ended with the client's own error: no verdict, the next request probes
    assert b.acquire()


def test_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("99999") == 300.0  # capped
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") <= 0.0 + 1e-9  # a past date: now


# -- routing with fake providers ---------------------------------------------------------------------------------

def model(policy="priority", threshold=2, cooldown=5.0, n=3, **kw) -> ModelConfig:
    providers = tuple(ProviderConfig(name=f"p{i}", dialect="jina", base_url="http://x", score="cosine", **kw)
                      for i in range(n))
    return ModelConfig(name="m", providers=providers, policy=policy, failure_threshold=threshold, cooldown_s=cooldown)


class FakeProvider(Provider):
    """Answers with toy scores, or does what `script` says next: an exception to raise, or seconds to sleep."""

    def __init__(self, config, m, clock, script=(), cost=None):
        super().__init__(config, m, clock)
        self.script = list(script)
        self.calls = 0
        self.timeouts = []

    async def start(self):
        self.score_rule = "cosine"

    async def stop(self):
        pass

    async def call(self, request, timeout_s):
        self.calls += 1
        self.timeouts.append(timeout_s)
        step = self.script.pop(0) if self.script else None
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, (int, float)):
            await asyncio.sleep(step)
        order = sorted(range(len(request.documents)), key=lambda i: -toy(request.query, request.documents[i]))
        return RerankResult([RankedDocument(i, toy(request.query, request.documents[i]), request.documents[i])
                             for i in order], Usage(documents=len(request.documents)), request.request_id)


def routed(m: ModelConfig, scripts=None, clock=time.monotonic) -> RoutedRunner:
    scripts = scripts or {}
    providers = [FakeProvider(p, m, clock, scripts.get(p.name, ())) for p in m.providers]
    return RoutedRunner(m, providers, clock=clock)


def req(deadline=None, **options):
    return RerankRequest(query=QUERY, documents=list(DOCS), options=RerankOptions(**options), deadline=deadline)


def run(coro):
    return asyncio.run(coro)


def call_once(provider, request, timeout):
    """The provider started, one call, stopped (also when the call raises): the call's result."""
    async def go():
        await provider.start()
        try:
            return await provider.call(request, timeout)
        finally:
            await provider.stop()

    return run(go())


def test_the_router_is_a_model_runner():
    assert isinstance(routed(model()), ModelRunner)


def test_priority_falls_back_on_failure_and_names_the_provider_that_answered():
    r = routed(model(), {"p0": [ProviderFailed("answered 500")], "p1": [ProviderFailed("connection failed")]})

    async def go():
        await r.start()
        return await r.submit(req())

    result = run(go())
    assert result.provider == "p2" and [d.index for d in result.results] == [3, 1, 0, 2]
    assert [p.calls for p in r.providers] == [1, 1, 1]
    assert [p.failed for p in r.providers] == [1, 1, 0] and r.providers[2].answered == 1


def test_the_breaker_takes_a_failing_provider_out_and_a_probe_brings_it_back():
    clock = Clock()
    fail = [ProviderFailed("answered 503") for _ in range(3)]
    r = routed(model(threshold=2, cooldown=5.0, n=2), {"p0": fail}, clock=clock)

    async def go():
        await r.start()
        answers = [(await r.submit(req())).provider for _ in range(4)]
        assert answers == ["p1"] * 4  # p0 failed twice (opened), then was skipped: no client request failed
        assert r.providers[0].calls == 2 and r.providers[0].breaker.state == "open"
        clock.t += 5.0  # cooldown over: the next request probes p0, which fails again: p1 answers
        assert (await r.submit(req())).provider == "p1"
        assert r.providers[0].calls == 3 and r.providers[0].breaker.state == "open"
        clock.t += 5.0  # p0 healthy now: the probe succeeds and closes the breaker
        assert (await r.submit(req())).provider == "p0"
        assert r.providers[0].breaker.state == "closed"

    run(go())


def test_429_holds_the_provider_for_its_retry_after_without_opening_the_breaker():
    clock = Clock()
    r = routed(model(threshold=1, n=2), {"p0": [ProviderFailed("429", retry_after=3.0, hold=True)]}, clock=clock)

    async def go():
        await r.start()
        assert (await r.submit(req())).provider == "p1"
        b = r.providers[0].breaker
        assert b.state == "closed" and not b.available()
        assert (await r.submit(req())).provider == "p1" and r.providers[0].calls == 1  # still held
        clock.t += 3.0
        assert (await r.submit(req())).provider == "p0"

    run(go())


def test_every_provider_out_is_a_503_with_the_soonest_retry_after():
    clock = Clock()
    r = routed(model(threshold=1, cooldown=7.0, n=2), {"p0": [ProviderFailed("x")], "p1": [ProviderFailed("y")]},
               clock=clock)

    async def go():
        await r.start()
        with pytest.raises(OverloadedError, match="every provider .* failed: p0: x; p1: y"):
            await r.submit(req())
        assert r.admission_error() is not None and r.admission_error().retry_after == 7.0
        with pytest.raises(OverloadedError) as e:
            await r.submit(req())
        assert e.value.retry_after == 7.0
        assert [p.calls for p in r.providers] == [1, 1]  # nothing sent while both are open

    run(go())


@pytest.mark.parametrize("error", [InvalidRequestError("top_n bad"), ModelError("unreadable 200")])
def test_the_clients_error_and_an_unreadable_200_are_never_retried(error):
    r = routed(model(), {"p0": [error]})

    async def go():
        await r.start()
        with pytest.raises(type(error)):
            await r.submit(req())

    run(go())
    assert [p.calls for p in r.providers] == [1, 0, 0]
    assert r.providers[0].breaker.state == "closed"


def test_cheapest_and_latency_policies_order_the_providers():
    m = model(policy="cheapest")
    m = ModelConfig(name="m", policy="cheapest", providers=tuple(
        ProviderConfig(name=n, dialect="jina", base_url="http://x", score="cosine", cost_per_1k_docs=c)
        for n, c in (("dear", 2.0), ("cheap", 0.1), ("mid", 1.0))))
    r = routed(m)
    assert [p.name for p in r.order()] == ["cheap", "mid", "dear"]
    lat = routed(model(policy="latency"))
    lat.providers[0].latency_s, lat.providers[1].latency_s = 0.3, 0.1
    assert [p.name for p in lat.order()] == ["p2", "p1", "p0"]  # unmeasured first, then fastest
    lat.providers[2].observe(1.0)
    assert [p.name for p in lat.order()] == ["p1", "p0", "p2"]


def test_each_attempt_gets_the_providers_timeout_or_what_is_left_of_the_deadline():
    r = routed(model(n=2, timeout_s=5.0), {"p0": [ProviderFailed("no answer within 5 s")]})

    async def go():
        await r.start()
        await r.submit(req(deadline=time.monotonic() + 60))
        assert r.providers[0].timeouts == [5.0]
        r.providers[0].script = [0.3]
        r.providers[1].script = []
        with pytest.raises(DeadlineExceededError):
            await r.submit(req(deadline=time.monotonic() - 0.01))

    run(go())


def test_the_concurrency_cap_sends_the_overflow_to_the_next_provider():
    r = routed(model(n=2, max_concurrency=1), {"p0": [0.2, 0.2]})

    async def go():
        await r.start()
        results = await asyncio.gather(r.submit(req()), r.submit(req()), r.submit(req()))
        return sorted(x.provider for x in results)

    answered = run(go())
    assert answered.count("p0") >= 1 and answered.count("p1") >= 1
    assert max(p.in_flight for p in r.providers) == 0


def test_drain_refuses_new_requests():
    r = routed(model())

    async def go():
        await r.start()
        r.drain(time.monotonic() + 1)
        with pytest.raises(OverloadedError, match="shutting down"):
            await r.submit(req())
        await r.stop()

    run(go())
    assert r.refused_draining == 1 and not r.running


def test_mixed_score_rules_are_refused_at_start():
    r = routed(model(n=2))
    r.providers[1].start = _set_rule(r.providers[1], "sigmoid")

    with pytest.raises(ConfigError, match="mixes score rules"):
        run(r.start())


def _set_rule(p, rule):
    async def start():
        p.score_rule = rule
    return start


# -- translation: each dialect against a real lastrank app ------------------------------------------------------------

class ToyScheduler(ModelRunner):
    capabilities = CAPS
    busy = False
    queued_requests = 0
    queued_tokens = 0
    tokens_per_second = None
    refused_draining = 0
    running = False

    def __init__(self):
        self.seen = []

    async def start(self):
        self.running = True

    async def stop(self):
        self.running = False

    def admission_error(self):
        return None

    def drain(self, deadline=None):
        return 0

    async def submit(self, request):
        self.seen.append(request)
        scores = [2 * toy(request.query, d) - 1 for d in request.documents]  # a cosine in [-1, 1]
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        if request.options.score_threshold is not None:
            order = [i for i in order if scores[i] >= request.options.score_threshold]
        if request.options.top_n is not None:
            order = order[:request.options.top_n]
        return RerankResult([RankedDocument(i, scores[i], request.documents[i], raw_score=scores[i]) for i in order],
                            Usage(documents=len(request.documents), prompt_tokens=42), request.request_id)


@pytest.fixture
def upstream(tmp_path):
    """A real lastrank app (toy scores, one API key) in process; yields (TestClient, key, seen headers)."""
    from fastapi.testclient import TestClient

    from lastrank.api.app import create_app
    from lastrank.api.settings import ServerSettings
    from lastrank.store import Store

    store = Store(tmp_path / "upstream.db")
    _, key = store.create_key("router")
    app = create_app(ServerSettings(model=("toy",)), store, scheduler=ToyScheduler())
    with TestClient(app) as client:
        yield client, key
    store.close()


def bridge(client, log: list):
    """An httpx transport that hands each request to the in-process upstream (and records its headers)."""
    def handle(request: httpx.Request) -> httpx.Response:
        log.append(dict(request.headers))
        r = client.request(request.method, request.url.path, content=request.content,
                           headers={k: v for k, v in request.headers.items() if k != "host"})
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)
    return httpx.MockTransport(handle)


@pytest.mark.parametrize("dialect", ["lastrank", "jina", "cohere_v1", "cohere_v2", "tei"])
def test_each_dialect_gives_the_upstreams_indices_order_and_scores(upstream, dialect):
    client, key = upstream
    direct = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS},
                         headers={"authorization": f"Bearer {key}"}).json()["results"]
    cfg = ProviderConfig(name="u", dialect=dialect, base_url="http://upstream", api_key_env="U_KEY",
                         score=None if dialect == "lastrank" else "cosine", model="toy")
    m = ModelConfig(name="m", providers=(cfg,))
    seen: list = []
    p = RemoteProvider(cfg, m, environ={"U_KEY": key}, transport=bridge(client, seen))

    result = call_once(p, req(top_n=3), 10.0)
    assert p.score_rule == "cosine"
    assert [d.index for d in result.results] == [d["index"] for d in direct][:3] == [3, 1, 0]
    for got, want in zip(result.results, direct):
        assert got.relevance_score == pytest.approx(want["relevance_score"], abs=1e-12)
        assert got.document == DOCS[got.index]
    assert all(h.get("authorization") == f"Bearer {key}" for h in seen)


def test_a_provider_without_api_key_env_sends_no_authorization(upstream):
    client, _ = upstream
    cfg = ProviderConfig(name="u", dialect="jina", base_url="http://upstream", score="cosine")
    seen: list = []
    p = RemoteProvider(cfg, ModelConfig(name="m", providers=(cfg,)), transport=bridge(client, seen))

    with pytest.raises(ProviderFailed, match="answered 401"):  # the upstream needs a key: the operator's problem
        call_once(p, req(), 10.0)
    assert seen and all("authorization" not in h for h in seen)


def test_a_missing_key_variable_is_a_start_up_error_naming_the_variable():
    cfg = ProviderConfig(name="u", dialect="jina", base_url="http://upstream", score="cosine", api_key_env="NOPE_KEY")
    p = RemoteProvider(cfg, ModelConfig(name="m", providers=(cfg,)), environ={})
    with pytest.raises(ConfigError, match="NOPE_KEY"):
        run(p.start())


def _scripted(status, body=None, headers=None, raw=None):
    def handle(request):
        return httpx.Response(status, json=body, headers=headers) if raw is None else httpx.Response(status, content=raw)
    return httpx.MockTransport(handle)


@pytest.mark.parametrize("status, body, headers, expect", [
    (500, {"detail": "boom"}, None, ("fail", None)),
    (503, {"detail": "busy"}, {"retry-after": "4"}, ("fail", 4.0)),
    (429, {"detail": "slow down"}, {"retry-after": "2"}, ("hold", 2.0)),
    (429, {"detail": "slow down"}, None, ("hold", 1.0)),
    (401, {"detail": "bad key"}, None, ("fail", None)),
    (402, {"detail": "insufficient credit"}, None, ("fail", None)),  # the router's own upstream credit ran out
    (302, None, {"location": "http://elsewhere/"}, ("fail", None)),  # a redirect is never followed
    (400, {"detail": "top_n must be >= 0"}, None, InvalidRequestError),
    (422, {"detail": "bad field"}, None, InvalidRequestError),
    (200, {"results": [{"index": 9, "relevance_score": 0.1}]}, None, ModelError),
    (200, {"results": [{"index": 0, "relevance_score": "high"}]}, None, ModelError),
    (200, {"nothing": []}, None, ModelError),
])
def test_upstream_answers_are_classified(status, body, headers, expect):
    cfg = ProviderConfig(name="u", dialect="jina", base_url="http://upstream", score="sigmoid")
    p = RemoteProvider(cfg, ModelConfig(name="m", providers=(cfg,)), transport=_scripted(status, body, headers))

    if isinstance(expect, tuple):
        with pytest.raises(ProviderFailed) as e:
            call_once(p, req(), 5.0)
        assert (("hold" if e.value.hold else "fail"), e.value.retry_after) == expect
    else:
        with pytest.raises(expect) as e:
            call_once(p, req(), 5.0)
        if expect is InvalidRequestError:
            assert body["detail"] in e.value.message and "'u'" in e.value.message


def test_a_connect_error_is_a_provider_failure():
    cfg = ProviderConfig(name="u", dialect="jina", base_url="http://127.0.0.1:9", score="sigmoid")  # discard port
    p = RemoteProvider(cfg, ModelConfig(name="m", providers=(cfg,)))

    with pytest.raises(ProviderFailed, match="connection failed"):
        call_once(p, req(), 5.0)


def test_a_request_a_dialect_cannot_carry_goes_to_one_that_can_or_is_a_400():
    jina_only = ModelConfig(name="m", providers=(
        ProviderConfig(name="t", dialect="tei", base_url="http://x", score="cosine"),))
    r = routed(jina_only)
    r.providers = [RemoteProvider(p, jina_only) for p in jina_only.providers]
    with pytest.raises(InvalidRequestError, match="t: the tei dialect has no return_embeddings"):
        run(r._route(req(return_embeddings=True)))


def test_a_routed_model_behind_the_api_answers_in_the_clients_dialect_and_bills_once_naming_the_provider(
        upstream, tmp_path):
    """The router app (create_app with a RoutedRunner) over an in-process lastrank upstream: the first provider
    answers 500, the second (TEI dialect) answers; the client (Cohere v2) gets its own shape; one ledger row names
    the provider; the upstream key is in no response, no /v1/models and not in the router's database."""
    from fastapi.testclient import TestClient

    from lastrank.api.app import create_app
    from lastrank.api.models import ServedModel
    from lastrank.api.settings import ServerSettings
    from lastrank.store import Store

    client, key = upstream
    m = ModelConfig(name="rerank", failure_threshold=1, cooldown_s=60.0, providers=(
        ProviderConfig(name="broken", dialect="jina", base_url="http://broken", score="cosine", api_key_env="U_KEY"),
        ProviderConfig(name="tei-up", dialect="tei", base_url="http://upstream", score="cosine", api_key_env="U_KEY")))
    seen: list = []
    env = {"U_KEY": key}
    providers = [RemoteProvider(m.providers[0], m, environ=env, transport=_scripted(500, {"detail": "down"})),
                 RemoteProvider(m.providers[1], m, environ=env, transport=bridge(client, seen))]
    store = Store(tmp_path / "router.db")
    app = create_app(ServerSettings(model=("x",)), store,
                     models=[ServedModel(name="rerank", scheduler=RoutedRunner(m, providers))])
    texts = []
    with TestClient(app) as router:
        for _ in range(2):
            r = router.post("/v2/rerank", json={"model": "rerank", "query": QUERY, "documents": DOCS, "top_n": 2})
            assert r.status_code == 200, r.text
            body = r.json()
            assert [x["index"] for x in body["results"]] == [3, 1] and body["meta"]["billed_units"]["search_units"] == 1
            assert body["results"][0]["relevance_score"] == pytest.approx(1.0 - 2.0 / 4.0)  # cosine 2*(3/4)-1
            texts.append(r.text)
        listing = router.get("/v1/models")
        texts.append(listing.text)
        entry = listing.json()["data"][0]
        assert entry["score"] == "cosine" and entry["policy"] == "priority"
        health = {p["name"]: p["health"]["state"] for p in entry["providers"]}
        assert health == {"broken": "open", "tei-up": "closed"}
        assert all("url" not in k for p in entry["providers"] for k in p)
        rows = store.list_usage()
        metrics = router.get("/metrics").text
    assert 'lastrank_router_provider_state{model="rerank",provider="broken"} 2.0' in metrics
    assert 'lastrank_router_provider_state{model="rerank",provider="tei-up"} 0.0' in metrics
    assert 'lastrank_router_provider_answered_total{model="rerank",provider="tei-up"} 2.0' in metrics
    assert 'lastrank_router_provider_failures_total{model="rerank",provider="broken"} 1.0' in metrics
    assert [(row.model, row.provider, row.documents) for row in rows] == [("rerank", "tei-up", 4)] * 2
    assert len({row.request_id for row in rows}) == 2
    store.close()
    assert not any(key in t for t in texts)
    db_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("router.db*"))
    assert key.encode() not in db_bytes


class CuttingScheduler(ToyScheduler):
    """The toy, reporting what a real plan would after cutting documents 1 and 3 and the query."""

    async def submit(self, request):
        result = await super().submit(request)
        result.usage.truncated_indices, result.usage.max_doc_length = [1, 3], 8
        result.usage.query_truncated, result.usage.max_query_length = True, 4
        return result


@pytest.mark.parametrize("dialect", ["lastrank", "jina", "tei"])
def test_a_lastrank_upstreams_truncation_report_is_passed_on(tmp_path, dialect):
    """The upstream's X-Lastrank-* headers and meta.warnings reach the router's client (its indices are the
    client's); a TEI answer has no meta, so its headers are said in words. A provider that reports nothing (a
    scripted Jina answer) leaves the usual report (nothing cut)."""
    from fastapi.testclient import TestClient

    from lastrank.api.app import create_app
    from lastrank.api.models import ServedModel
    from lastrank.api.settings import ServerSettings
    from lastrank.store import Store

    up_store = Store(tmp_path / "upstream.db")
    _, key = up_store.create_key("router")
    upstream_app = create_app(ServerSettings(model=("toy",)), up_store, scheduler=CuttingScheduler())
    body = {"model": "rerank", "query": QUERY, "documents": DOCS}
    with TestClient(upstream_app) as upstream:
        direct = upstream.post("/v1/rerank", json=body | {"model": "toy"}, headers={"authorization": f"Bearer {key}"})
        said = direct.json()["meta"]["warnings"]
        assert len(said) == 2 and "indices 1, 3" in said[0] and direct.headers["x-lastrank-truncated-documents"] == "2"
        cfg = ProviderConfig(name="u", dialect=dialect, base_url="http://upstream", api_key_env="U_KEY", model="toy",
                             score=None if dialect == "lastrank" else "cosine")
        m = ModelConfig(name="rerank", providers=(cfg,))
        provider = RemoteProvider(cfg, m, environ={"U_KEY": key}, transport=bridge(upstream, []))
        router_store = Store(tmp_path / "router.db")
        app = create_app(ServerSettings(model=("x",)), router_store,
                         models=[ServedModel(name="rerank", scheduler=RoutedRunner(m, [provider]))])
        with TestClient(app) as router:
            for route, sent in (("/v1/rerank", body), ("/v2/rerank", body),
                                ("/rerank", {"query": QUERY, "texts": DOCS})):
                r = router.post(route, json=sent)
                assert r.status_code == 200, r.text
                assert r.headers["x-lastrank-truncated-documents"] == "2", route
                assert r.headers["x-lastrank-query-truncated"] == "true", route
                if route != "/rerank":
                    want = said if dialect != "tei" else [
                        "2 of 4 documents were truncated by the provider before ranking",
                        "the query was truncated by the provider before ranking"]
                    assert r.json()["meta"]["warnings"] == want, route
        router_store.close()
    up_store.close()
    quiet = RemoteProvider(ProviderConfig(name="j", dialect="jina", base_url="http://j", score="cosine"), m,
                           transport=_scripted(200, {"results": [{"index": i, "relevance_score": 0.1 * i}
                                                                 for i in range(4)]}))

    async def go():
        await quiet.start()
        try:
            return await quiet.call(req(), 5.0)
        finally:
            await quiet.stop()

    assert run(go()).truncation is None


PRICED = """
[[models]]
name = "rerank"
failure_threshold = 1
cooldown_s = 60.0
price_per_1k_docs = 2.5
[[models.providers]]
name = "broken"
dialect = "jina"
base_url = "http://broken"
score = "cosine"
api_key_env = "U_KEY"
cost_per_1k_docs = 9.0
[[models.providers]]
name = "tei-up"
dialect = "tei"
base_url = "http://upstream"
score = "cosine"
api_key_env = "U_KEY"
cost_per_1k_docs = 0.75
"""


@pytest.mark.parametrize("price_flag, charged", [((), 2.5), (("rerank=0.5",), 0.5)])
def test_the_configs_price_bills_the_routed_model_and_price_flag_overrides_it(upstream, tmp_path, monkeypatch,
                                                                             price_flag, charged):
    """price_per_1k_docs of the router config flows through routed_models into /v1/models and the ledger (the
    client's price), beside the upstream cost of the provider that answered (its cost_per_1k_docs, not the
    failed one's); `--price rerank=USD` overrides the config."""
    from fastapi.testclient import TestClient

    from lastrank.api.app import create_app
    from lastrank.api.settings import ServerSettings
    from lastrank.router import routed_models
    from lastrank.store import Store

    client, key = upstream
    monkeypatch.setenv("U_KEY", key)
    settings = ServerSettings(model=("x",), price=price_flag)
    [served] = routed_models(settings, parse_config(PRICED))
    assert served.price_per_1k_docs == 2.5
    broken, up = served.scheduler.providers
    broken._transport = _scripted(500, {"detail": "down"})
    up._transport = bridge(client, [])
    store = Store(tmp_path / "router.db")
    with TestClient(create_app(settings, store, models=[served])) as router:
        [entry] = router.get("/v1/models").json()["data"]
        assert entry["price_per_1k_docs"] == charged
        r = router.post("/v1/rerank", json={"model": "rerank", "query": QUERY, "documents": DOCS})
        assert r.status_code == 200, r.text
    [row] = store.list_usage()
    store.close()
    assert row.provider == "tei-up" and row.documents == 4
    assert row.cost_usd == pytest.approx(4 * charged / 1000, abs=1e-12)  # what the key was charged
    assert row.upstream_cost_usd == pytest.approx(4 * 0.75 / 1000, abs=1e-12)  # what tei-up cost the operator


def test_vllm_score_answers_are_read():
    cfg = ProviderConfig(name="v", dialect="vllm_score", base_url="http://vllm", score="sigmoid", model="bge")
    sent = []

    def handle(request):
        sent.append((request.url.path, request.content))
        return httpx.Response(200, json={"object": "list", "model": "bge", "usage": {"prompt_tokens": 17},
                                         "data": [{"index": i, "object": "score", "score": s}
                                                  for i, s in enumerate([0.2, 0.9, 0.1, 0.5])]})

    p = RemoteProvider(cfg, ModelConfig(name="m", providers=(cfg,)), transport=httpx.MockTransport(handle))

    result = call_once(p, req(top_n=2), 5.0)
    assert [(d.index, d.relevance_score) for d in result.results] == [(1, 0.9), (3, 0.5)]
    assert result.usage.prompt_tokens == 17 and result.usage.documents == 4
    import json
    assert sent[0][0] == "/score" and json.loads(sent[0][1]) == {"model": "bge", "text_1": QUERY, "text_2": DOCS}


def test_a_local_provider_runs_its_scheduler_and_a_full_queue_is_skipped():
    from lastrank.router.providers import LocalProvider

    cfg = ProviderConfig(name="here", dialect="local", model="toy")
    m = ModelConfig(name="m", providers=(cfg,))
    scheduler = ToyScheduler()
    p = LocalProvider(cfg, m, settings=None, scheduler=scheduler)

    async def go():
        await p.start()
        result = await p.call(req(), None)
        scheduler.admission_error = lambda: OverloadedError("full", retry_after=1.0)
        with pytest.raises(ProviderFailed) as e:
            await p.call(req(), None)
        await p.stop()
        return result, e.value

    result, refused = run(go())
    assert p.score_rule == "cosine" and [d.index for d in result.results] == [3, 1, 0, 2]
    assert refused.skip and len(scheduler.seen) == 1


def test_a_local_provider_loads_the_real_model(tmp_path):
    """dialect = "local" with the packaged MiniLM: loaded by the provider itself, its answer the model's own."""
    from lastrank.api.settings import ServerSettings
    from lastrank.reranker import Reranker
    from lastrank.router.providers import LocalProvider

    cfg = ProviderConfig(name="here", dialect="local", model="minilm")
    p = LocalProvider(cfg, ModelConfig(name="m", providers=(cfg,)), settings=ServerSettings(dtype="float32"))

    result = call_once(p, req(), None)
    want = Reranker("minilm", dtype="float32").rerank(QUERY, DOCS)
    assert p.score_rule == "cosine"
    assert [(d.index, round(d.relevance_score, 5)) for d in result.results] == \
        [(d["index"], round(d["relevance_score"], 5)) for d in want]


@pytest.mark.parametrize("dialect", ["jina", "cohere_v1", "cohere_v2", "tei", "vllm", "vllm_score"])
def test_chunk_mode_goes_only_to_lastrank_providers(dialect):
    cfg = ProviderConfig(name="x", dialect=dialect, base_url="http://x", score="cosine")
    p = RemoteProvider(cfg, ModelConfig(name="m", providers=(cfg,)))
    assert "chunk mode" in p.unsupported(req(chunking="chunk", max_chunks_per_doc=3))
    assert p.unsupported(req()) is None
    lastrank = ProviderConfig(name="l", dialect="lastrank", base_url="http://x")
    assert RemoteProvider(lastrank, ModelConfig(name="m", providers=(lastrank,))).unsupported(
        req(chunking="chunk", max_chunks_per_doc=3)) is None


def test_a_lastrank_provider_down_at_start_that_comes_back_with_another_score_rule_stays_out(upstream):
    """A lastrank provider unreachable at start has no known score rule, so start() could not compare it. When it
    comes back serving a model of another rule (the toy upstream: cosine), neither a request nor a probe may put it
    in service: the client would get scores of two scales under one model name. It is a provider failure (the next
    provider answers), never a 500."""
    client, key = upstream
    clock = Clock()
    m = ModelConfig(name="m", failure_threshold=1, cooldown_s=5.0, providers=(
        ProviderConfig(name="late", dialect="lastrank", base_url="http://upstream", api_key_env="U_KEY", model="toy"),
        ProviderConfig(name="sig", dialect="jina", base_url="http://x", score="sigmoid")))
    up = {"now": False}
    healthy = bridge(client, [])

    def handle(request):
        if not up["now"]:
            raise httpx.ConnectError("refused", request=request)
        return healthy.handle_request(request)

    late = RemoteProvider(m.providers[0], m, clock=clock, environ={"U_KEY": key}, transport=httpx.MockTransport(handle))
    sig = FakeProvider(m.providers[1], m, clock)
    sig.start = _set_rule(sig, "sigmoid")
    r = RoutedRunner(m, [late, sig], clock=clock)

    async def go():
        await r.start()
        assert r.capabilities.score == "sigmoid" and late.breaker.state == "open"
        up["now"] = True
        clock.t += 5.0  # cooldown over: the next request tries `late` again
        assert (await r.submit(req())).provider == "sig"
        assert late.score_rule is None and late.breaker.state == "open"
        clock.t += 5.0
        assert await late.probe() is False and late.breaker.state == "open"  # nor does a health probe close it
        assert (await r.submit(req())).provider == "sig"
        await r.stop()

    run(go())
