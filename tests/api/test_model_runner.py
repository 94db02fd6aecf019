"""engine/runner.py's ModelRunner: the local Scheduler, the Ray ModelClient and the API tests' fake each declare
it and have every member with a compatible signature, so api/ reads them without getattr probes."""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace

import pytest

from lastrank.engine.runner import ModelRunner
from lastrank.engine.scheduler import Scheduler
from lastrank.api.ray import ModelClient
from lastrank.types import RankedDocument, RerankRequest, RerankResult, Usage


from support.keyword_backend import KeywordBackend  # tests/ is on sys.path (pyproject.toml pythonpath)

METHODS = ("start", "stop", "drain", "admission_error", "submit", "describe")
DATA = ("capabilities", "running", "busy", "queued_requests", "queued_tokens", "tokens_per_second", "refused_draining",
        "providers")


def test_the_protocol_lists_what_api_reads():
    members = {name for name in vars(ModelRunner) if not name.startswith("_")} | set(ModelRunner.__annotations__)
    assert members == set(METHODS) | set(DATA)


@pytest.fixture(params=["scheduler", "ray-client", "fake"])
def runner(request, fake_scheduler):
    if request.param == "scheduler":
        return Scheduler(KeywordBackend())
    if request.param == "ray-client":
        return ModelClient(handle=None)
    return fake_scheduler


def test_each_runner_declares_and_satisfies_the_protocol(runner):
    assert ModelRunner in type(runner).__mro__  # declared, not only shaped alike
    assert isinstance(runner, ModelRunner)
    for name in DATA:
        getattr(runner, name)  # present before start() (the API and metrics read them any time)
    assert isinstance(runner.running, bool) and not runner.running
    assert isinstance(runner.busy, bool) and isinstance(runner.queued_requests, int)
    assert runner.admission_error() is None  # nothing queued: nothing to refuse
    assert runner.drain() == 0 and runner.refused_draining == 0
    for name in METHODS:
        want = inspect.signature(getattr(ModelRunner, name))
        have = inspect.signature(getattr(type(runner), name))
        assert inspect.iscoroutinefunction(getattr(type(runner), name)) == \
            inspect.iscoroutinefunction(getattr(ModelRunner, name)), name
        assert list(have.parameters)[:len(want.parameters)] == list(want.parameters), (name, have)
        extra = list(have.parameters.values())[len(want.parameters):]
        assert all(p.default is not p.empty for p in extra), (name, have)  # callable as the Protocol says


def test_a_runner_missing_a_member_is_not_one():
    class Partial:
        capabilities = None
        running = busy = False
        queued_requests, queued_tokens, tokens_per_second = 0, None, None

        async def submit(self, request): ...

    assert not isinstance(Partial(), ModelRunner)  # no start / stop / admission_error


def test_the_ray_client_counts_the_requests_it_waits_on():
    """ModelClient has no queue of its own: queued_requests and busy are the submits waiting on a replica,
    queued_tokens and tokens_per_second are None ("not known here"), which metrics leave unset."""

    async def scenario():
        answer = asyncio.get_running_loop().create_future()
        handle = SimpleNamespace(submit=SimpleNamespace(remote=lambda request, budget_s: answer))
        client = ModelClient(handle)
        request = RerankRequest("q", ["a"])
        call = asyncio.ensure_future(client.submit(request))
        await asyncio.sleep(0)
        assert (client.queued_requests, client.busy) == (1, True)
        assert client.queued_tokens is None and client.tokens_per_second is None
        result = RerankResult([RankedDocument(0, 0.5, "a")], Usage(documents=1), request.request_id)
        answer.set_result(result)
        assert await call is result
        assert (client.queued_requests, client.busy) == (0, False)

    asyncio.run(scenario())
