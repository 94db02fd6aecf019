"""Credit and budgets through the API (fake scheduler, real SQLite store): a 402 before any model work in every
dialect, a charge exactly once on success, the credit back on any failure, prices per model in /v1/models."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from support.live_server import LiveServer

NANO = 1_000_000_000
Q = "q words"
D = ["q words here", "nothing", "q"]
# every rerank route and dialect: (path, body)
ROUTES = [("/v1/rerank", {"query": Q, "documents": D}),                     # Jina
          ("/v2/rerank", {"query": Q, "documents": D, "model": "jina-reranker-v3"}),    # Cohere v2
          ("/v1/rerank", {"query": Q, "documents": D, "return_documents": True}),
          ("/rerank", {"query": Q, "texts": D}),                            # TEI
          ("/rerank", {"query": Q, "documents": D})]                        # Jina on /rerank


def _post(client, path, body, key):
    return client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})


def test_402_before_model_work_in_every_dialect(make_client, fake_scheduler, store):
    # 3 documents at 0.008 USD / 1,000 cost 24,000 nano-USD; the key holds 20,000
    record, key = store.create_key("poor", credit_usd="0.00002")
    c = make_client()
    for path, body in ROUTES:
        r = _post(c, path, body, key)
        assert r.status_code == 402, (path, r.text)
        j = r.json()
        assert j["error"]["type"] == "insufficient_credit" and j["error"]["code"] == 402
        assert "costs 0.000024000 USD" in j["detail"] and "0.000020000 USD left" in j["message"]
    assert fake_scheduler.requests == []  # no model work at all
    assert store.list_usage() == [] and store.get_key(record.id).balance_nano_usd == 20_000


def test_charged_once_per_success_then_402(make_client, fake_scheduler, store):
    record, key = store.create_key("acme", credit_usd="0.00005")  # two requests of 24,000 fit, not three
    c = make_client()
    assert _post(c, *ROUTES[0], key).status_code == 200
    assert _post(c, *ROUTES[3], key).status_code == 200
    r = _post(c, *ROUTES[1], key)
    assert r.status_code == 402 and len(fake_scheduler.requests) == 2
    rows = store.list_usage()
    assert [round(u.cost_usd * NANO) for u in rows] == [24_000, 24_000]
    assert store.get_key(record.id).balance_nano_usd == 50_000 - 48_000
    [acct] = store.credit_accounts()
    assert (acct["held_usd"], acct["spent_usd"]) == (0.0, 48_000 / NANO)


def test_per_model_price_and_models_list(make_client, fake_scheduler, store):
    record, key = store.create_key("acme", credit_usd=1)
    c = make_client(price=("jina-reranker-v3=2",))  # 2 USD per 1,000 documents: 3 documents cost 0.006
    models = c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert [m["price_per_1k_docs"] for m in models] == [2.0]
    assert _post(c, *ROUTES[0], key).status_code == 200
    assert store.list_usage()[0].cost_usd == 0.006
    assert store.get_key(record.id).balance_nano_usd == NANO - 6_000_000
    with pytest.raises(ValueError, match="not served"):
        make_client(price=("other=1",))
    with pytest.raises(ValueError, match="MODEL=USD"):
        make_client(price=("jina-reranker-v3=-1",))
    # a price the ledger cannot count is refused at start, not a 400 blaming the client on every request
    with pytest.raises(ValueError, match="more than 9 decimals"):
        make_client(price=("jina-reranker-v3=0.0000000001",))
    with pytest.raises(ValueError, match="at most 1000000000 USD"):
        make_client(price=("jina-reranker-v3=5e9",))
    with pytest.raises(ValueError, match="--price-per-1k-docs has more than 9 decimals"):
        make_client(price_per_1k_docs=1e-10)


def test_a_failed_request_gives_the_credit_back(make_client, fake_scheduler, store):
    from lastrank.errors import DeadlineExceededError, ModelError

    record, key = store.create_key("acme", credit_usd="0.00003")  # one request's worth
    c = make_client()
    for error in (ModelError("CUDA out of memory"), DeadlineExceededError("late")):
        async def broken(request, error=error):
            raise error

        fake_scheduler.submit = broken
        assert _post(c, *ROUTES[0], key).status_code in (500, 504)
        assert store.get_key(record.id).balance_nano_usd == 30_000  # given back, nothing billed
    assert store.list_usage() == [] and store.credit_accounts()[0]["held_usd"] == 0.0


def test_store_outage_after_the_answer_gives_the_credit_back(make_client, fake_scheduler, store, monkeypatch):
    from lastrank.errors import StoreUnavailableError

    record, key = store.create_key("acme", credit_usd="0.00003")
    c = make_client()

    def down(row, held=False):
        raise StoreUnavailableError("the database is down", retry_after=1.0)

    monkeypatch.setattr(store, "record_usage", down)
    assert _post(c, *ROUTES[0], key).status_code == 503
    assert store.get_key(record.id).balance_nano_usd == 30_000 and store.list_usage() == []


def test_budget_402_names_the_period_and_reset(make_client, fake_scheduler, store):
    record, key = store.create_key("acme", budget="0.00005/day")  # no credit limit, 50,000 nano-USD a day
    c = make_client()
    assert _post(c, *ROUTES[0], key).status_code == 200
    assert _post(c, *ROUTES[0], key).status_code == 200
    r = _post(c, *ROUTES[0], key)
    assert r.status_code == 402 and r.json()["error"]["type"] == "budget_exceeded"
    assert "per day" in r.json()["detail"] and "resets at" in r.json()["detail"]
    assert int(r.headers["retry-after"]) >= 1
    assert len(fake_scheduler.requests) == 2 and store.get_key(record.id).balance_nano_usd is None


def test_unlimited_keys_and_keyless_servers_are_billed_as_before(make_client, fake_scheduler, store):
    c = make_client()
    assert c.post("/v1/rerank", json=ROUTES[0][1]).status_code == 200  # loopback, no keys: open
    record, key = store.create_key("free")
    assert _post(c, *ROUTES[0], key).status_code == 200
    assert [u.cost_usd for u in store.list_usage()] == [0.000024, 0.000024]
    assert store.credit_accounts("free")[0]["balance_usd"] is None


def test_credit_granted_to_a_cached_unlimited_key_is_charged_at_once(make_client, fake_scheduler, store):
    """The API remembers a verified key (--key-cache-s) with what it was then: unlimited. Credit granted to it
    meanwhile (`lastrank keys credit --add`) must pay for the requests it answers from then on, whichever way the
    API took them (a hold, or a cached record that still said unlimited): balance = granted - billed since."""
    record, key = store.create_key("late")  # unlimited
    c = make_client()
    assert _post(c, *ROUTES[0], key).status_code == 200  # verified and cached as unlimited
    store.grant_credit(record.id, "0.00003")
    assert _post(c, *ROUTES[0], key).status_code == 200
    assert store.get_key(record.id).balance_nano_usd == 30_000 - 24_000
    [acct] = store.credit_accounts()
    assert acct["held_usd"] == 0.0


def test_a_client_that_goes_away_gets_its_credit_back(store, fake_scheduler):
    """Through a real ASGI server: the handler cancels the work on disconnect and releases the hold."""
    from lastrank.api.settings import ServerSettings

    record, key = store.create_key("acme", credit_usd="0.00003")
    fake_scheduler.gate = asyncio.Event()  # never set: requests wait until cancelled
    with LiveServer(ServerSettings(), store, scheduler=fake_scheduler) as srv:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(srv.url + "/v1/rerank", json=ROUTES[0][1], timeout=0.5,
                       headers={"Authorization": f"Bearer {key}"})
        for _ in range(500):  # up to 10 s for the server to see the client gone and give the hold back
            if fake_scheduler.cancelled and store.get_key(record.id).balance_nano_usd == 30_000:
                break
            time.sleep(0.02)
        assert len(fake_scheduler.cancelled) == 1
        assert store.get_key(record.id).balance_nano_usd == 30_000 and store.list_usage() == []


def test_the_ledger_shows_the_price_charged_and_the_upstream_cost(make_client, fake_scheduler, store):
    """A routed model (lastrank/router) names the provider that answered; its cost_per_1k_docs is the upstream cost."""
    from types import SimpleNamespace

    answer = fake_scheduler.submit

    async def routed(request):
        result = await answer(request)
        result.provider = "gpu-b"
        return result

    fake_scheduler.submit = routed
    fake_scheduler.providers = [SimpleNamespace(name="gpu-a", config=SimpleNamespace(cost_per_1k_docs=9.0)),
                                SimpleNamespace(name="gpu-b", config=SimpleNamespace(cost_per_1k_docs=0.5))]
    c = make_client(price=("jina-reranker-v3=1.5",))
    assert c.post("/v1/rerank", json=ROUTES[0][1]).status_code == 200
    [row] = store.list_usage()
    assert (row.provider, row.cost_usd, row.upstream_cost_usd) == ("gpu-b", 0.0045, 0.0015)


def test_a_served_model_may_carry_its_own_price(store):
    """ServedModel.price_per_1k_docs (what a router config can set) prices a model; --price overrides it."""
    from lastrank.api.app import model_prices
    from lastrank.api.models import ModelTable, ServedModel
    from lastrank.api.settings import ServerSettings

    table = ModelTable([ServedModel(name="a", price_per_1k_docs=0.5), ServedModel(name="b")])
    assert model_prices(ServerSettings(), table) == {"a": 0.5}
    assert model_prices(ServerSettings(price=("a=0.25", "b=1")), table) == {"a": 0.25, "b": 1.0}
