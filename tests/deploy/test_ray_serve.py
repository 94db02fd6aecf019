"""`lastrank serve --ray`: the documented command, run as a real process that starts a local Ray cluster, two
replicas of the real all-MiniLM-L6-v2 behind the same FastAPI app, a real PostgreSQL store (tests/support/postgres_server).

One server for the module (Ray's start-up dominates). The module checks: the answers equal the in-process
Reranker's; domain errors raised in a replica keep their status across the hop; both replicas serve;
back-pressure is a 503 with Retry-After; a replica SIGKILLed under load is replaced, the requests it held
answer 503 (never a hang), and every 200 has exactly one ledger row. The first tests need no cluster: the
client's deadline hop and its error mapping, against Ray's own exception classes.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from support import postgres_server
from support.kill_under_load import Load, assert_billed_exactly
from support.server_process import free_port, is_ready, wait_until
from support.threads import in_threads
from lastrank.errors import DeadlineExceededError, InvalidRequestError, ModelError, OverloadedError
from lastrank.api.ray import ModelClient, ModelReplica, ReplicaFailedError, _domain_error, deployment_name
from lastrank.types import RerankRequest, RerankResult, Usage

# A local Ray cluster has token auth on (the token in ~/.ray/auth_token); this process joins it to find and kill
# replicas. Ray reads the mode once, when it is first imported: set here, before any test imports it.
os.environ.setdefault("RAY_AUTH_MODE", "token")
# The server keeps its local cluster on loopback (api/ray.py's LOOPBACK_ENV); a process joining it needs the same
# setting, or Ray swaps the 127.0.0.1 of the GCS address for this machine's routable address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
QUERY = "how long do fleas live"
DOCS = ["Paris is the capital of France.", "Adult fleas live for two to three months.",
        "A flea's life cycle: egg, larva, pupa, adult.", "Tea grows on shrubs.",
        "Fleas can survive a year without a blood meal.", "The Eiffel Tower is 330 metres tall."]
MAX_ONGOING, MAX_QUEUED = 2, 2  # per model replica / per ingress: 2 x 2 + 2 requests at once, then 503


# ---------------------------------------------------------------------------- no cluster: the client alone

class _Value:
    """An outcome the fake replica returns as it is, even an exception (as ModelReplica.submit does)."""

    def __init__(self, value):
        self.value = value


class _Response:
    def __init__(self, outcome):
        self.outcome, self.cancelled = outcome, False

    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        if isinstance(self.outcome, _Value):
            return self.outcome.value
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def cancel(self):
        self.cancelled = True


class _Handle:
    """A DeploymentHandle's shape: handle.submit.remote(request, budget_s) -> awaitable response."""

    def __init__(self, outcome):
        self.outcome, self.calls, self.responses = outcome, [], []
        self.submit = self

    def remote(self, *args):
        self.calls.append(args)
        self.responses.append(_Response(self.outcome(*args) if callable(self.outcome) else self.outcome))
        return self.responses[-1]


def no_deadline_request() -> RerankRequest:
    return RerankRequest(query="q", documents=["d"])


def test_deadline_crosses_as_a_budget_and_back_to_the_replicas_clock():
    result = RerankResult([], Usage(), "r1")
    handle = _Handle(result)
    request = RerankRequest(query="q", documents=["d"], request_id="r1", deadline=time.monotonic() + 30.0)
    assert asyncio.run(ModelClient(handle).submit(request)) is result
    (wire, budget_s), = handle.calls
    assert wire.deadline is None and wire.request_id == "r1" and request.deadline is not None
    assert 29.0 < budget_s <= 30.0
    pickle.loads(pickle.dumps(wire))  # what Ray sends: a plain dataclass

    class Scheduler:  # the replica side: its deadline is on its own clock
        async def submit(self, r):
            self.deadline = r.deadline
            return result

    from types import SimpleNamespace

    replica = SimpleNamespace(scheduler=Scheduler(), submitted=0, ongoing_documents=0)
    before = time.monotonic()
    asyncio.run(ModelReplica.submit(replica, wire, 12.5))
    assert before + 12.5 <= replica.scheduler.deadline <= time.monotonic() + 12.5

    class Full:  # a domain error is the replica's answer, not an exception Serve would log as a failure
        async def submit(self, r):
            raise OverloadedError("too many tokens queued", retry_after=4.0)

    replica.scheduler = Full()
    answer = asyncio.run(ModelReplica.submit(replica, wire, None))
    assert isinstance(answer, OverloadedError) and answer.retry_after == 4.0 and replica.ongoing_documents == 0
    with pytest.raises(OverloadedError):
        asyncio.run(ModelClient(_Handle(_Value(answer))).submit(no_deadline_request()))

    expired = RerankRequest(query="q", documents=["d"], deadline=time.monotonic() - 1)
    with pytest.raises(DeadlineExceededError):
        asyncio.run(ModelClient(handle).submit(expired))
    assert len(handle.calls) == 1  # never sent

    no_deadline = RerankRequest(query="q", documents=["d"])
    asyncio.run(ModelClient(handle).submit(no_deadline))
    assert handle.calls[-1][1] is None


def test_a_replica_that_never_answers_is_a_504_not_a_hang(monkeypatch):
    import lastrank.api.ray as serve_ray

    class Never(_Response):
        def __await__(self):
            yield from asyncio.sleep(3600).__await__()

    handle = _Handle(None)
    handle.remote = lambda *args: handle.responses.append(Never(None)) or handle.responses[-1]
    monkeypatch.setattr(serve_ray, "DEADLINE_GRACE_S", 0.05)
    request = RerankRequest(query="q", documents=["d"], deadline=time.monotonic() + 0.05)
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        asyncio.run(ModelClient(handle).submit(request))
    assert time.monotonic() - started < 2
    assert handle.responses[0].cancelled


def test_errors_from_ray_become_the_apis_errors():
    from ray.exceptions import ActorDiedError, RayTaskError
    from ray.serve.exceptions import BackPressureError

    def wrapped(cause):  # what awaiting a replica's failed call raises
        return RayTaskError("submit", "Traceback: ...", pickle.loads(pickle.dumps(cause))).as_instanceof_cause()

    bad = _domain_error(wrapped(InvalidRequestError("documents[3] exceeds 256 tokens")))
    assert type(bad) is InvalidRequestError and bad.message == "documents[3] exceeds 256 tokens"
    busy = _domain_error(wrapped(OverloadedError("too many tokens queued", retry_after=7.0)))
    assert type(busy) is OverloadedError and busy.retry_after == 7.0  # the replica's own hint survives
    assert type(_domain_error(wrapped(DeadlineExceededError("late")))) is DeadlineExceededError
    assert type(_domain_error(wrapped(RuntimeError("boom")))) is ModelError

    full = _domain_error(BackPressureError(num_queued_requests=2, max_queued_requests=2))
    assert type(full) is OverloadedError and full.retry_after >= 1
    died = _domain_error(ActorDiedError())
    assert isinstance(died, ReplicaFailedError) and isinstance(died, OverloadedError)
    assert "replica" in died.message and died.retry_after == 1.0

    from lastrank.api.errors import status_for

    assert [status_for(e) for e in (bad, busy, full, died)] == [400, 503, 503, 503]

    async def cancelled():  # a client gone: the call to the replica is cancelled too
        handle = _Handle(lambda *_: None)

        class Slow(_Response):
            def __await__(self):
                yield from asyncio.sleep(3600).__await__()

        handle.remote = lambda *args: handle.responses.append(Slow(None)) or handle.responses[-1]
        task = asyncio.ensure_future(ModelClient(handle).submit(RerankRequest(query="q", documents=["d"])))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return handle.responses[0].cancelled

    assert asyncio.run(cancelled())
    assert deployment_name(0, "org/model#1") == "model0-org_model_1"


def test_the_app_over_a_model_client_ready_and_errors(monkeypatch):
    """create_app with a ModelClient as the model's scheduler (as the ingress builds it): /ready follows the
    running replicas, and the errors a model deployment call raises get their statuses through HTTP."""
    from fastapi.testclient import TestClient
    from ray.exceptions import RayTaskError
    from ray.serve.exceptions import BackPressureError

    import lastrank.api.ray as serve_ray
    from lastrank.api.app import create_app
    from lastrank.api.models import ServedModel
    from lastrank.engine.backend import Capabilities
    from lastrank.engine.dtype_choice import explicit
    from lastrank.types import RankedDocument

    caps = Capabilities(family="bi-encoder", architecture="fake", listwise=False, score="cosine", raw_score="cosine",
                        instruction=False, embedding_dim=None, context_length=512, max_doc_length=256,
                        max_query_length=256)

    def answer(request, budget_s):
        if request.query == "bad":
            return RayTaskError("submit", "...", InvalidRequestError("documents[0] is bad")).as_instanceof_cause()
        if request.query == "late":  # a domain error the replica answers with (ModelReplica.submit)
            return _Value(pickle.loads(pickle.dumps(DeadlineExceededError("the deadline passed with 2 of 3 blocks not run"))))
        if request.query == "busy":
            return BackPressureError(num_queued_requests=2, max_queued_requests=2)
        return RerankResult([RankedDocument(0, 0.5, request.documents[0])], Usage(documents=1, prompt_tokens=3, blocks=1),
                            request.request_id)

    handle = _Handle(answer)
    handle.deployment_name, handle.app_name = "model0-m", "lastrank"

    class Info:
        @staticmethod
        def remote():
            return _Response({"capabilities": caps, "random_weights": True, "dtype_choice": explicit("float32")})

    handle.info = Info
    running = [2]
    monkeypatch.setattr(serve_ray, "POLL_S", 0.01)
    monkeypatch.setattr(ModelClient, "_count_running", lambda self: running[0])
    model = ServedModel(name="m")
    model.scheduler = ModelClient(handle, served=model)
    with TestClient(create_app(models=[model])) as http:
        assert http.get("/ready").status_code == 200
        entry = http.get("/v1/models").json()["data"][0]
        assert entry["random_weights"] is True  # told by the replica, as is the type it runs in
        assert entry["dtype"] == "float32" and entry["dtype_choice"]["requested"] == "float32"
        r = http.post("/v1/rerank", json={"query": "q", "documents": ["d"]})
        assert r.status_code == 200 and r.json()["results"][0]["relevance_score"] == 0.5
        assert handle.calls[-1][0].deadline is None and handle.calls[-1][1] > 0  # the deadline went as a budget
        r = http.post("/v1/rerank", json={"query": "bad", "documents": ["d"]})
        assert (r.status_code, r.json()["error"]["message"]) == (400, "documents[0] is bad")
        r = http.post("/v1/rerank", json={"query": "late", "documents": ["d"]})
        assert r.status_code == 504 and "2 of 3 blocks" in r.json()["error"]["message"]
        r = http.post("/v1/rerank", json={"query": "busy", "documents": ["d"]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        running[0] = 0  # no replica running: not ready
        deadline = time.monotonic() + 5
        while http.get("/ready").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert http.get("/ready").status_code == 503
        running[0] = 1
        while http.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert http.get("/ready").status_code == 200


def test_settings_ray_mode_refuses():
    from lastrank.api.settings import ServerSettings
    from lastrank.errors import LastrankError
    from lastrank.api.ray import check

    check(ServerSettings(ingress_replicas=2), "postgresql://u@db/lastrank")
    check(ServerSettings(replicas=2, max_replicas=4), "/tmp/ledger.db")
    for settings, store, why in [
        (ServerSettings(ingress_replicas=2), "/tmp/ledger.db", "PostgreSQL"),  # rate limits would not be shared
        (ServerSettings(replicas=3, max_replicas=2), "/tmp/ledger.db", "below"),
        (ServerSettings(device="cuda"), "/tmp/ledger.db", "--replica-gpus"),
    ]:
        with pytest.raises(LastrankError, match=why):
            check(settings, store)


# ---------------------------------------------------------------------------- the real thing

class RayServer:
    def __init__(self, store_url: str, log_path):
        self.store_url, self.log_path = store_url, log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 240.0) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # set above for this process: the server must set it itself
        self._log = open(self.log_path, "ab")
        # Its own session: Ray's processes are its children; the test stops the CLI only, and it stops them.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lastrank", "serve", "--ray", "--replicas", "2", "--store", self.store_url,
             "--model", MODEL, "--port", str(self.port), "--dtype", "float32", "--log-level", "warning",
             "--max-ongoing-requests", str(MAX_ONGOING), "--max-queued-requests", str(MAX_QUEUED)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_until(lambda: is_ready(self.url), timeout, self.proc, self.log)

    @property
    def gcs_address(self) -> str:
        return re.search(r"\(gcs (\S+)\)", self.log()).group(1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # the CLI takes Serve and the local cluster down
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory):
    import ray

    from lastrank.store import open_store

    with postgres_server.database() as url:
        with open_store(url) as store:
            _, key = store.create_key("ray-tests")
        server = RayServer(url, tmp_path_factory.mktemp("ray") / "serve.log")
        try:
            server.start()
            ray.init(address=server.gcs_address, log_to_driver=False)
            server.key, server.store_url = key, url
            yield server
        finally:
            ray.shutdown()  # a no-op when the last test already left (it takes the cluster down)
            server.stop()


def _post(server, docs=DOCS, timeout=60.0, **fields):
    return httpx.post(server.url + "/v1/rerank", json={"query": QUERY, "documents": docs, **fields},
                      headers={"Authorization": f"Bearer {server.key}"}, timeout=timeout)


def _replica_stats() -> dict[str, dict]:
    """{replica id: its stats} for every live replica of the model, asked of each replica's actor directly
    (ModelReplica.record_routing_stats), so a busy replica answers too."""
    import ray

    prefix = f"SERVE_REPLICA::lastrank#{deployment_name(0, 'all-MiniLM-L6-v2')}#"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
    stats = {}
    for name in names:
        try:
            s = ray.get(ray.get_actor(name, namespace="serve").record_routing_stats.remote(), timeout=30)
        except (ValueError, ray.exceptions.RayError):
            continue  # gone meanwhile, or still starting (its model not loaded yet)
        stats[s["replica"]] = s
    return stats


def test_answers_equal_the_in_process_reranker(ray_server):
    from lastrank import Reranker

    expected = Reranker(MODEL, device="cpu", dtype="float32").rerank(QUERY, DOCS)
    r = _post(ray_server)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "all-MiniLM-L6-v2"
    assert [x["index"] for x in body["results"]] == [x["index"] for x in expected]
    for got, want in zip(body["results"], expected):
        assert got["relevance_score"] == pytest.approx(want["relevance_score"], abs=1e-5)
    assert r.headers.get_list("x-request-id") == [body["id"]]  # one id: the app's (the ledger's key)

    ready = httpx.get(ray_server.url + "/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["models"] == {"all-MiniLM-L6-v2": "ready"}
    models = httpx.get(ray_server.url + "/v1/models", headers={"Authorization": f"Bearer {ray_server.key}"},
                       timeout=10).json()["data"]
    assert [(m["id"], m["family"], m["random_weights"], m["dtype"]) for m in models] == [
        ("all-MiniLM-L6-v2", "bi-encoder", False, "float32")]  # the dtype as the local server's /v1/models says it
    assert httpx.post(ray_server.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS},
                      timeout=10).status_code == 401  # the same auth as plain serve


def test_a_replicas_domain_error_keeps_its_status(ray_server):
    long_doc = "fleas " * 600  # over MiniLM's 256 tokens: the replica's plan refuses it without truncation
    r = httpx.post(ray_server.url + "/rerank", json={"query": QUERY, "texts": ["short", long_doc], "truncate": False},
                   headers={"Authorization": f"Bearer {ray_server.key}"}, timeout=60)
    assert r.status_code == 400, r.text
    assert "exceed" in r.json()["error"]["message"] and r.json()["error"]["type"] == "invalid_request_error"


def test_both_replicas_serve(ray_server):
    """Three clients at once, within the two replicas' capacity: every request answered 200, both replicas
    used. On a loaded machine Ray's router can see the replicas' queue-length probes time out and answer the
    back-pressure 503 (with Retry-After, never billed) even within capacity; a client retrying as told, as
    real clients do, must still get every request through."""
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {ray_server.key}"}) as http:
        def one(i):
            for _ in range(5):
                r = http.post(ray_server.url + "/v1/rerank",
                              json={"query": QUERY, "documents": [f"{d} ({i})" for d in DOCS]})
                if r.status_code != 503 or "retry-after" not in r.headers:
                    break
                time.sleep(min(float(r.headers["retry-after"]), 1.0))
            return r.status_code

        statuses = []
        in_threads(3, lambda i: statuses.extend(one(i) for _ in range(4)))
    assert statuses == [200] * 12
    stats = _replica_stats()
    assert len(stats) == 2, stats
    assert all(s["submitted"] > 0 for s in stats.values()), stats
    assert len({s["pid"] for s in stats.values()}) == 2


def test_back_pressure_is_a_503_with_retry_after(ray_server):
    before = _ledger_ids(ray_server)
    docs = [f"{d} {i}" for i in range(20) for d in DOCS]  # 120 documents: each request holds a replica a while
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def one():
        r = _post(ray_server, docs=docs)
        with lock:
            results.append(r)

    in_threads(16, lambda i: one())  # capacity: 2 x 2 running + 2 queued
    refused = [r for r in results if r.status_code == 503]
    served = [r for r in results if r.status_code == 200]
    assert len(refused) + len(served) == 16, [r.status_code for r in results]
    assert refused and served
    for r in refused:
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "overloaded_error", r.text
    _assert_ledger_exact(before, [r.json()["id"] for r in served], [r.headers["x-request-id"] for r in refused],
                         ray_server)


def _ledger_ids(server) -> list[str]:
    from lastrank.store import open_store

    with open_store(server.store_url) as store:
        return [row.request_id for row in store.list_usage(key="ray-tests")]


def _assert_ledger_exact(before: list[str], answered: list[str], refused: list[str], server) -> None:
    """The rows written since `before` are exactly the 200s the clients saw: one each, none for a 5xx."""
    assert_billed_exactly(_ledger_ids(server), answered, before=before, refused=refused)


def _replica_holding(documents: int, deadline: float) -> dict:
    """The stats of the replica holding a request of at least `documents` documents, once one does."""
    while time.monotonic() < deadline:
        for s in _replica_stats().values():
            if s["ongoing_documents"] >= documents:
                return s
        time.sleep(0.02)
    raise AssertionError(f"no replica took the {documents}-document request")


LONG = 3000  # documents of the request that is in flight when its replica is killed (seconds of work)
REFUSALS = ("replica_failed_error", "overloaded_error")


def test_a_replica_killed_under_load_is_replaced_and_billing_stays_exact(ray_server):
    from ray import serve

    before = _replica_stats()
    assert len(before) == 2
    billed_before = _ledger_ids(ray_server)
    docs = [f"{d} {i}" for i in range(8) for d in DOCS]  # 48 documents: a replica is busy while requests run

    def refusal(r: httpx.Response) -> bool:
        # the killed replica's own requests; and, while one replica carries the load, Ray's back-pressure (its
        # queue is full): both are answered properly and never billed
        return r.status_code == 503 and r.json()["error"]["type"] in REFUSALS and "retry-after" in r.headers

    long_docs = [f"{DOCS[i % len(DOCS)]} [{i}]" for i in range(LONG)]
    long_answer: list[httpx.Response] = []

    def long_request() -> None:  # certainly in flight on the replica that is killed
        long_answer.append(_post(ray_server, docs=long_docs, timeout=120))

    # 3 clients + the long request: under two replicas' capacity
    with Load(ray_server.url, QUERY, docs, clients=3, seconds=60, timeout=60, refusal=refusal, join_timeout=90,
              headers={"Authorization": f"Bearer {ray_server.key}"}) as load:
        load.wait_for(6)
        load.also(long_request)
        victim = _replica_holding(LONG, load.deadline)
        os.kill(victim["pid"], signal.SIGKILL)  # the replica's process, as the OOM killer would
        load.wait_for(len(load.answered) + 6)  # the other replica keeps answering
    assert not load.hung, "a request hung"
    assert not load.cut and not load.other, (load.cut, load.other)  # a timeout (a hang), a dropped connection
    assert len(load.answered) >= 12, ray_server.log()
    (cut,) = long_answer
    assert cut.status_code == 503 and cut.json()["error"]["type"] == "replica_failed_error", cut.text
    assert "replica" in cut.json()["error"]["message"] and cut.headers["retry-after"] == "1"
    failed = [*load.refused, cut.headers["x-request-id"]]
    print(f"kill under load: {len(load.answered)} answered, {len(failed)} failed with the replica")
    _assert_ledger_exact(billed_before, load.answered, failed, ray_server)

    # Ray starts a replacement: two live replicas again, one of them new.
    deadline = time.monotonic() + 90
    after = _replica_stats()
    while not (len(after) == 2 and victim["replica"] not in after) and time.monotonic() < deadline:
        time.sleep(0.5)
        after = _replica_stats()
    assert len(after) == 2 and victim["replica"] not in after, (before, after)

    def states():
        app = serve.status().applications["lastrank"]
        return app.deployments[deployment_name(0, "all-MiniLM-L6-v2")].replica_states

    # Serve's own status follows the controller's health checks, a little after the replica answers
    while states().get("RUNNING") != 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert states().get("RUNNING") == 2, states()
    assert _post(ray_server).status_code == 200
    assert httpx.get(ray_server.url + "/ready", timeout=10).status_code == 200


def test_a_model_that_cannot_load_ends_serve_ray_with_its_reason(tmp_path):
    """A corrupt model folder under --ray: Serve gives up on its replicas, and the command says why in one
    line and exits 2 (before: exit 1 with Serve's RuntimeError traceback, which named no reason)."""
    import shutil

    from lastrank.model.resolve import resolve_checkpoint

    folder = tmp_path / "corrupt"
    shutil.copytree(resolve_checkpoint(MODEL), folder)
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    out = subprocess.run([sys.executable, "-m", "lastrank", "serve", "--ray", "--model", str(folder), "--port",
                          str(free_port()), "--db", str(tmp_path / "x.db"), "--log-level", "warning"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("lastrank: error: ray: model0-corrupt: ") and "JSONDecodeError" in last, last
    # The command's own output after it stops carries no traceback. Lines Ray streams from its actors'
    # logs ("(ServeController pid=...) ...": the replica's failure as the controller logged it) are Ray's, and
    # may arrive after "stopping" or before it, as Ray's log streaming happens to deliver them.
    own = [line for line in out.stderr.split("lastrank: ray: stopping")[-1].splitlines()
           if not re.match(r"^(\x1b\[[0-9;]*m)?\([^\s()]+ pid=\d+", line)]
    assert not any("Traceback" in line for line in own), own


def _process_tree(pid: int) -> list:
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def test_every_port_of_the_local_cluster_is_on_loopback(ray_server):
    """`serve --ray` on 127.0.0.1: every TCP port the command and the Ray processes it started listen on is on
    loopback (before: the GCS, raylet, workers, agents and the replicas' gRPC servers listened on all interfaces
    or on the machine's routable address)."""
    import ipaddress

    import psutil

    listening = []
    for proc in _process_tree(ray_server.proc.pid):
        try:
            listening += [(proc.name(), c.laddr) for c in proc.net_connections(kind="tcp")
                          if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    names = {name for name, _ in listening}
    assert {"gcs_server", "raylet"} <= names and any("ServeReplica" in n for n in names), names  # all were seen

    def loopback(ip: str) -> bool:
        address = ipaddress.ip_address(ip.split("%")[0])
        return (getattr(address, "ipv4_mapped", None) or address).is_loopback

    assert [(name, addr) for name, addr in listening if not loopback(addr.ip)] == []
    assert ("127.0.0.1", ray_server.port) in {(a.ip, a.port) for _, a in listening}  # Serve's proxy: --host/--port
    # printed once serve.run returns, which can be after /ready first said 200
    deadline = time.monotonic() + 60
    while "listens on loopback" not in ray_server.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "lastrank: ray: every port of the local Ray cluster listens on loopback" in ray_server.log_path.read_text()


# Keep this test last: it ends the module's server.
def test_a_dead_proxy_ends_the_server_non_zero(ray_server):
    """Ray's memory monitor killed Serve's proxy on a loaded machine and the server never recovered, waiting
    for a signal: the driver's watchdog now notices a dead proxy and exits non-zero, for a supervisor."""
    import ray

    # This process leaves the cluster first: the server's exit takes the cluster down, and a driver whose local
    # raylet is dead exits its whole process in ray.shutdown() ("Exiting because the Raylet IPC connection
    # failed"): pytest itself vanished after this test, with no summary, on a 2-core Zen 3.
    ray.shutdown()
    (proxy,) = [p for p in _process_tree(ray_server.proc.pid) if p.name().startswith("ray::ProxyActor")]
    proxy.kill()  # SIGKILL, as the memory monitor does
    try:
        rc = ray_server.proc.wait(120)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the server kept running with a dead proxy:\n{ray_server.log()}") from None
    assert rc == 2, ray_server.log()
    log = ray_server.log()
    assert "lastrank: error: ray: Serve's HTTP proxy" in log and "died" in log, log
