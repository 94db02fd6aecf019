"""`lastrank serve --ray`: the same FastAPI app and handlers, with each served model in Ray Serve replicas.

    HTTP -> Ray Serve proxy -> Ingress replica: create_app(settings, store, models=[...]) -- auth, dialects,
                                   |            validation, rate limits, the ledger (written here only)
                                   |  ModelClient.submit(request) = handle.submit.remote(request, budget_s)
                                   v
                               Model deployment, one per served model, N replicas: each loads the backend
                               (families.load_backend) and runs the local Scheduler (batching, fairness,
                               deadlines, admission) exactly as `lastrank serve` does in one process

The ingress's ServedModel.scheduler is a `ModelClient`: the handler (api/handler.py) cannot tell it from a
local Scheduler. What crosses the hop, and how it comes back:
  - RerankRequest / RerankResult are plain dataclasses (pickled as they are). The request's deadline is an
    absolute time.monotonic(), meaningless in another process: the client sends the remaining seconds
    (`budget_s`) and the replica turns them back into a deadline on its own clock. The client also stops
    waiting at the deadline plus a grace (a replica that never answers cannot hang a request).
  - A domain error in a replica (InvalidRequestError, OverloadedError, DeadlineExceededError, ModelError,
    ...) comes back as the answer's value (raised, Serve would log each as a failed request with a
    traceback) and the client raises it, so a 400 stays a 400 and a replica's own 503 keeps its Retry-After.
    Anything raised in a replica arrives wrapped in Ray's RayTaskError; the client re-raises the original
    `cause` if it is a domain error, else a ModelError (500).
  - Back-pressure: a model replica takes --max-ongoing-requests at once (its scheduler batches them);
    more wait in Ray's queue up to --max-queued-requests per ingress replica; past that Ray raises
    BackPressureError, answered as the API's 503 + Retry-After (OverloadedError).
  - A replica that dies (killed, out of memory, node lost) fails the requests it held with
    ReplicaFailedError: 503 "the model replica serving this request failed; retry", Retry-After 1. Ray
    starts a replacement. Not retried here: a retry of the model call could never bill twice (the ledger
    row is written by the ingress only after a result, one row per request id), but a request that
    itself kills its replica (out of memory on a huge request) would take a second replica down with it;
    the client's retry is a new request, counted by its rate limit.
  - /ready: 200 while every model deployment has at least one RUNNING replica (ModelClient.running,
    from serve.status(), polled every POLL_S seconds).

Ingress replicas: 1 by default. The ledger is exactly-once whatever their number (the request id is the
ledger's key), but with the SQLite store each ingress process would keep its own rate-limit buckets and the
file must be on the ingress's node, so more than one ingress replica needs the PostgreSQL store (refused
otherwise), and with SQLite the ingress is pinned to the head node.

What is not carried over from plain `lastrank serve`: the connection cap and header timeout (uvicorn
protocol settings: Ray's proxy owns the sockets), the early refusal before the body is read (the client has
no admission_error: the refusal comes from Ray's queue instead), and the per-batch engine metrics (each
model replica's scheduler runs in its own process; /metrics shows the ingress's HTTP and usage metrics).

The command itself (`run`): with a loopback --host it keeps every port of the local Ray cluster on loopback
(LOOPBACK_ENV, keep_replica_grpc_on_loopback; checked with `exposed_ports` and printed), and it exits non-zero
when Serve's proxy or controller dies (ServeWatchdog), for a supervisor to restart it.

Started by `lastrank serve --ray ...` (cli/commands/serve.py calls `run`), or from a Serve config file with
`import_path: lastrank.api.ray:build` (see docs/deploy.md). Needs Ray Serve:
`pip install -e '.[ray]'` in a lastrank checkout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lastrank.api.app import create_app, make_scheduler
from lastrank.api.logs import configure_logging
from lastrank.api.models import ServedModel, served_models
from lastrank.api.settings import STORE_ENV, ServerSettings
from lastrank.engine.runner import ModelRunner
from lastrank.errors import DeadlineExceededError, LastrankError, ModelError, OverloadedError
from lastrank.families import load_backend
from lastrank.store import is_postgres_url, open_store
from lastrank.types import RerankRequest, RerankResult

log = logging.getLogger("lastrank.ray")

APP_NAME = "lastrank"
# How long the client waits past a request's deadline for the replica's own DeadlineExceededError before
# giving up on the replica itself.
DEADLINE_GRACE_S = 5.0
# How often the ingress asks Ray's controller how many replicas of each model are running (for /ready).
POLL_S = 2.0
# Requests one ingress replica handles at once (it is async and mostly waits on model replicas; the
# back-pressure that matters is the model deployments' queue).
INGRESS_MAX_ONGOING_REQUESTS = 1000


class ReplicaFailedError(OverloadedError):
    """The model replica holding the request died (or became unreachable) before answering: a 503."""

    type = "replica_failed_error"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the ingress needs to know of one served model (a ServedModel without its loader)."""

    name: str
    model_id: str
    aliases: tuple[str, ...] = ()
    implicit_names: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------ model replicas

class ModelReplica:
    """One replica of one served model: the backend and the local Scheduler, in a Ray Serve replica."""

    async def __init__(self, model_id: str, settings: ServerSettings):
        keep_replica_grpc_on_loopback()

        def load():
            backend = load_backend(model_id, device=settings.device, dtype=settings.dtype)
            backend.warmup()
            return backend

        backend = await asyncio.to_thread(load)
        self.random_weights = bool(backend.random_weights)
        self.dtype_choice = backend.dtype_choice  # what runs (and, for "auto", why): shown by /v1/models
        self.scheduler = make_scheduler(backend, settings)  # as create_app builds a model's scheduler
        await self.scheduler.start()
        self.submitted = 0  # requests given to this replica
        self.ongoing_documents = 0  # documents of the requests it holds now
        note = " -- RANDOM WEIGHTS: its scores mean nothing" if self.random_weights else ""
        print(f"lastrank: model replica of {model_id} ({backend.capabilities.family}) loaded and warmed up "
              f"({settings.device}, {backend.dtype_choice.describe()}); ready{note}", file=sys.stderr, flush=True)

    async def submit(self, request: RerankRequest, budget_s: float | None) -> RerankResult:
        """The local Scheduler's submit, with the deadline rebuilt on this process's monotonic clock."""
        self.submitted += 1
        if budget_s is not None:
            request.deadline = time.monotonic() + budget_s  # `request` is this call's own unpickled copy
        self.ongoing_documents += len(request.documents)
        try:
            return await self.scheduler.submit(request)
        except LastrankError as e:
            # An expected answer (a 400, the replica's own 503, a 504), returned rather than raised: Serve logs
            # every raised exception as a failed request with its traceback. The client raises it.
            return e
        finally:
            self.ongoing_documents -= len(request.documents)

    async def info(self) -> dict:
        """What the ingress shows for this model (Capabilities is a frozen dataclass: picklable)."""
        return {"capabilities": self.scheduler.capabilities, "random_weights": self.random_weights,
                "dtype_choice": self.dtype_choice}

    async def record_routing_stats(self) -> dict:
        """Serve's per-replica stats hook (also readable from the replica's actor directly, as the tests do):
        this replica's id (its Ray actor's name), process, requests given and documents it holds now."""
        from ray import serve

        return {"replica": serve.get_replica_context().replica_id.to_full_id_str(), "pid": os.getpid(),
                "submitted": self.submitted, "ongoing_documents": self.ongoing_documents}

    async def check_health(self) -> None:
        # Ray Serve calls this periodically; raising makes it replace the replica.
        if not self.scheduler.running:
            raise RuntimeError("the scheduler's worker is not running")

    # No __del__: Serve drains a replica's requests before stopping it, and the scheduler's worker is a daemon
    # thread that ends with the process.


# ------------------------------------------------------------------------------------------ the client

class ModelClient(ModelRunner):
    """What the ingress's ServedModel holds as its scheduler: submit() through the model deployment's handle, a
    remote ModelRunner (engine/runner.py). The queues are the replicas' own: this side counts the requests it
    is waiting on, says None for what it cannot see (queued tokens, throughput), and never refuses ahead of
    submit (Ray's back-pressure refuses there)."""

    queued_tokens = None
    tokens_per_second = None
    refused_draining = 0

    def __init__(self, handle, served=None):
        self.handle = handle
        self.served = served  # the ServedModel, told the replica's random_weights at start
        self.capabilities = None
        self._running_replicas: int | None = None
        self._poller: asyncio.Task | None = None
        self._in_flight = 0  # submits waiting on a replica (read by metrics; only the event loop writes it)

    @property
    def running(self) -> bool:
        """At least one replica of the model deployment is RUNNING (as Ray's controller last said)."""
        return bool(self._running_replicas)

    @property
    def queued_requests(self) -> int:
        return self._in_flight

    @property
    def busy(self) -> bool:
        return self._in_flight > 0

    def admission_error(self) -> OverloadedError | None:
        return None  # only a replica knows its queue; a full one answers submit with back-pressure

    def drain(self, deadline: float | None = None) -> int:
        return 0  # nothing queued here: Ray Serve drains each replica's own queue when it stops it

    async def start(self) -> None:
        info = await self.handle.info.remote()  # waits for a first replica to be up
        self.capabilities = info["capabilities"]
        if self.served is not None:
            self.served.random_weights = info["random_weights"]
            self.served.dtype_choice = info.get("dtype_choice")
        self._running_replicas = 1  # one just answered
        self._poller = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                self._running_replicas = await asyncio.to_thread(self._count_running)
            except Exception as e:  # the controller is unreachable: say not ready rather than guess
                log.warning("cannot read the replicas of %s from Ray: %s", self.handle.deployment_name, e)
                self._running_replicas = 0

    def _count_running(self) -> int:
        from ray import serve

        app = serve.status().applications.get(self.handle.app_name)
        deployment = app.deployments.get(self.handle.deployment_name) if app else None
        if deployment is None:
            return 0
        return int({str(getattr(k, "value", k)): v for k, v in deployment.replica_states.items()}.get("RUNNING", 0))

    async def submit(self, request: RerankRequest) -> RerankResult:
        self._in_flight += 1
        try:
            return await self._submit(request)
        finally:
            self._in_flight -= 1

    async def _submit(self, request: RerankRequest) -> RerankResult:
        budget_s = None
        if request.deadline is not None:
            budget_s = request.deadline - time.monotonic()
            if budget_s <= 0:
                raise DeadlineExceededError("the request's deadline passed before it reached a model replica")
        wire = dataclasses.replace(request, deadline=None)  # an absolute monotonic time means nothing there
        response = self.handle.submit.remote(wire, budget_s)
        call = asyncio.ensure_future(_wait(response))
        try:
            done, _ = await asyncio.wait({call}, timeout=None if budget_s is None else budget_s + DEADLINE_GRACE_S)
        except asyncio.CancelledError:
            call.cancel()
            response.cancel()  # the client went away: the replica drops the request's pending blocks
            raise
        if not done:
            call.cancel()
            response.cancel()
            raise DeadlineExceededError("no model replica answered within the request's deadline")
        try:
            result = call.result()
        except Exception as e:
            raise _domain_error(e) from e
        if isinstance(result, LastrankError):
            raise result  # the replica's domain error (ModelReplica.submit), as it was raised there
        return result


async def _wait(response):
    return await response


def _domain_error(e: Exception) -> LastrankError:
    """The API's error for an exception from a model deployment call (module docstring)."""
    from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

    if isinstance(e, LastrankError):
        # A dual RayTaskError(cause class) still carries the cause; raise the original object.
        cause = getattr(e, "cause", None)
        return cause if isinstance(cause, LastrankError) else e
    if isinstance(e, RayTaskError):
        cause = e.cause
        if isinstance(cause, LastrankError):
            return cause
        if isinstance(cause, (RayActorError, ReplicaUnavailableError)):
            return _replica_failed(cause)
        return ModelError(f"the model replica failed: {type(cause).__name__}: {cause}")
    if isinstance(e, BackPressureError):
        return OverloadedError(f"every replica of this model is busy and its queue is full ({e.message}); retry",
                               retry_after=e.retry_after_s or 1.0)
    if isinstance(e, (RayActorError, ReplicaUnavailableError)):
        return _replica_failed(e)
    if isinstance(e, DeploymentUnavailableError):
        return OverloadedError(f"the model deployment is unavailable: {e.message}", retry_after=2.0)
    if isinstance(e, TaskCancelledError):
        return _replica_failed(e)
    return ModelError(f"the call to the model replica failed: {type(e).__name__}: {e}")


def _replica_failed(e: Exception) -> ReplicaFailedError:
    log.warning("a model replica failed while holding a request: %s", str(e).splitlines()[0] if str(e) else e)
    return ReplicaFailedError("the model replica serving this request failed; retry", retry_after=1.0)


# ------------------------------------------------------------------------------------------ the ingress

class Ingress:
    """The HTTP app: create_app over the store, with a ModelClient per model deployment handle."""

    def __init__(self, settings: ServerSettings, store_target: str, specs: list[ModelSpec], handles: dict):
        keep_replica_grpc_on_loopback()
        configure_logging(settings)
        self.store = open_store(store_target)
        models = []
        for spec in specs:
            model = ServedModel(name=spec.name, model_id=spec.model_id, aliases=spec.aliases,
                                implicit_names=spec.implicit_names)
            model.scheduler = ModelClient(handles[spec.name], served=model)
            models.append(model)
        self.fastapi_app = create_app(settings, self.store, models=models)  # (`app` is Serve's property)

    def __serve_build_asgi_app__(self):
        return self.fastapi_app

    def __del__(self):
        self.store.close()


# Ray Serve's proxy calls the function this names (in its own process) for extra ASGI middlewares. `run` sets it
# in the environment of the Ray job it starts; a Serve instance already running keeps its proxy as it is.
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"


def proxy_middlewares() -> list:
    from starlette.middleware import Middleware

    return [Middleware(OneRequestIdMiddleware)]


class OneRequestIdMiddleware:
    """In Ray Serve's proxy: keep the first X-Request-Id of a response (the app's: the id in the body and the
    ledger) and drop the one Ray's proxy appends after it (its own id, or one the client sent), so a client
    sees one id. Without it (a Serve instance started without PROXY_CALLBACK_ENV) both headers are sent."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_one_id(message):
            if message["type"] == "http.response.start":
                headers, seen = [], False
                for name, value in message.get("headers", []):
                    if name.lower() == b"x-request-id":
                        if seen:
                            continue
                        seen = True
                    headers.append((name, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_one_id)


# ------------------------------------------------------------------------------------------ building

def deployment_name(index: int, served_name: str) -> str:
    """A Ray deployment name for a served model ('#' and '/' have meanings in Ray's names)."""
    return f"model{index}-" + re.sub(r"[^A-Za-z0-9_.-]", "_", served_name)


def check(settings: ServerSettings, store_target: str) -> None:
    """The settings Ray mode refuses, each with one clear line."""
    if settings.ingress_replicas > 1 and not is_postgres_url(store_target):
        raise LastrankError(
            f"--ingress-replicas {settings.ingress_replicas} needs the PostgreSQL store (--store postgresql://...): "
            "with SQLite each ingress process would keep its own rate limits, and the file is on one node")
    if settings.max_replicas is not None and settings.max_replicas < settings.replicas:
        raise LastrankError(f"--max-replicas {settings.max_replicas} is below --replicas {settings.replicas}")
    if settings.device.startswith("cuda") and not settings.replica_gpus:
        raise LastrankError("--device cuda with --ray needs --replica-gpus (e.g. 1): Ray hides GPUs from a "
                            "replica that reserves none")


def application(settings: ServerSettings, store_target: str, specs: list[ModelSpec]):
    """The Serve application: one deployment per model, bound into the ingress."""
    from ray import serve

    check(settings, store_target)
    handles = {}
    for i, spec in enumerate(specs):
        if settings.max_replicas is not None and settings.max_replicas > settings.replicas:
            scale: dict[str, Any] = {"autoscaling_config": {
                "min_replicas": settings.replicas, "max_replicas": settings.max_replicas,
                "target_ongoing_requests": max(1, settings.max_ongoing_requests // 2)}}
        else:
            scale = {"num_replicas": settings.replicas}
        deployment = serve.deployment(
            ModelReplica, name=deployment_name(i, spec.name), **scale,
            ray_actor_options={"num_cpus": settings.replica_cpus, "num_gpus": settings.replica_gpus},
            max_ongoing_requests=settings.max_ongoing_requests,
            max_queued_requests=settings.max_queued_requests,
            health_check_period_s=5.0,
        )
        handles[spec.name] = deployment.bind(spec.model_id, settings)

    ingress_options: dict[str, Any] = {"num_cpus": 0}  # async I/O; the model replicas hold the CPUs
    if not is_postgres_url(store_target):
        ingress_options["resources"] = {"node:__internal_head__": 0.001}  # the SQLite file's node
    ingress = serve.deployment(serve.ingress()(Ingress), name="Ingress", num_replicas=settings.ingress_replicas,
                               ray_actor_options=ingress_options,
                               max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS)
    return ingress.bind(settings, store_target, specs, handles)


def specs_from_models(models) -> list[ModelSpec]:
    """ModelSpecs from api/models.py's served_models (names, aliases and family names already settled)."""
    return [ModelSpec(name=m.name, model_id=m.model_id, aliases=tuple(m.aliases),
                      implicit_names=tuple(m.implicit_names)) for m in models]


def store_target_of(store) -> str:
    """The URL or absolute path another process opens the same store with."""
    url = getattr(store, "url", None)
    return url if url else str(Path(store.path).resolve())


def build(args: dict):
    """Serve config file entry point (`import_path: lastrank.api.ray:build`): `args` holds the store
    (`store`: a postgresql:// URL or a SQLite path; default $LASTRANK_STORE where the app is built, so a
    password can come from a secret) and any `lastrank serve` setting by its field name (e.g.
    `model: [minilm]`, `replicas: 2`, `dtype: float32`). Deployment options in the config file
    (num_replicas, ray_actor_options, ...) override what these settings give."""
    args = dict(args)
    store_target = args.pop("store", None) or os.environ.get(STORE_ENV)
    if not store_target:
        raise LastrankError(f"the Serve config's args need `store` (a postgresql:// URL or a SQLite path), "
                            f"or ${STORE_ENV} where the application is built")
    settings = ServerSettings(**args)
    return application(settings, str(store_target), specs_from_models(served_models(settings)))


def deploy(settings: ServerSettings, store_target: str, models):
    """Start Serve's HTTP proxy on --host/--port and deploy the application (ray.init must have run).
    Returns the ingress handle once every replica is up."""
    from ray import serve

    # lastrank's own access log (--access-log) and errors come from the replicas' stderr; Serve's per-call
    # lines would repeat each request
    logging_config = {"enable_access_log": False, "log_level": "DEBUG" if settings.log_level == "debug" else "WARNING"}
    serve.start(http_options={"host": settings.host, "port": settings.port}, logging_config=logging_config)
    return serve.run(application(settings, store_target, specs_from_models(models)), name=APP_NAME,
                     route_prefix="/", logging_config=logging_config)


# Set to 0 before Ray is imported, Ray takes the loopback address as its node's address (what it does on macOS
# and Windows): the GCS, the raylet, the object manager, every worker's gRPC server, the dashboard and runtime-env
# agents and the metrics port then listen on 127.0.0.1. Without it they listen on all interfaces or on the
# machine's routable address, whatever --host says (seen with `ss -ltnp`), and ray.init(_node_ip_address=
# "127.0.0.1") does not help: Ray replaces a loopback node address by the routable one.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# The driver's watchdog: how often it pings Serve's controller and proxies, and how long one may go unanswered.
WATCHDOG_S = 2.0
WATCHDOG_TIMEOUT_S = 30.0


def keep_replica_grpc_on_loopback() -> None:
    """Run in each replica's constructor: on a node whose address is loopback (LOOPBACK_ENV), bind the replica's
    inter-deployment gRPC server on 127.0.0.1 too. Ray Serve (2.60) binds it on "[::]:0", all interfaces, whatever
    the node's address (ray/serve/_private/replica.py, `_on_initialized`, which runs after the constructor). This
    replaces a private name of Ray's: if Ray changes it, nothing happens here, and the driver's check of every
    listening port (`exposed_ports`, printed at start) says what is exposed."""
    import ray

    try:
        from ray.serve._private import replica
    except ImportError:
        return
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "lastrank_loopback", False):
        return
    if ray.util.get_node_ip_address() not in ("127.0.0.1", "::1"):
        return

    def on_loopback(server, address: str):
        if address.startswith("[::]:"):
            address = "127.0.0.1:" + address.rpartition(":")[2]
        return original(server, address)

    on_loopback.lastrank_loopback = True
    replica.add_port_to_grpc_server = on_loopback


def exposed_ports() -> list[str]:
    """The TCP ports that this process and its descendants (a local Ray cluster: GCS, raylet, agents, workers,
    replicas) listen on beyond loopback, as "name pid address:port"."""
    import ipaddress

    import psutil  # a dependency of Ray

    exposed = []
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            connections = proc.net_connections(kind="tcp")
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in connections:
            address = ipaddress.ip_address(c.laddr.ip.split("%")[0])
            address = getattr(address, "ipv4_mapped", None) or address  # ::ffff:127.0.0.1 is loopback too
            if c.status == psutil.CONN_LISTEN and not address.is_loopback:
                exposed.append(f"{name} {proc.pid} {c.laddr.ip}:{c.laddr.port}")
    return exposed


class ServeWatchdog:
    """Serve's controller and HTTP proxies, pinged from the driver (`lastrank serve --ray`) every WATCHDOG_S.

    Ray's memory monitor kills workers, Serve's proxy among them, on a loaded machine, and Serve did not always
    come back: the port stayed dead while the driver waited for a signal. A proxy or controller that died (or has
    not answered for WATCHDOG_TIMEOUT_S) makes `problem()` say so, and `run` exits non-zero, for a supervisor to
    restart the whole server (a half-recovered Serve is worse than a clean start)."""

    def __init__(self):
        import ray
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        proxies = ray.get(controller.get_proxies.remote(), timeout=WATCHDOG_TIMEOUT_S)  # {node id: actor handle}
        self.targets = [("Serve's controller", controller, "check_alive")]
        self.targets += [(f"Serve's HTTP proxy (node {node_id[:8]})", proxy, "pong")
                         for node_id, proxy in proxies.items()]
        self.pending: dict[str, tuple[Any, float]] = {}  # name -> (the ping's ObjectRef, when it was sent)

    def problem(self) -> str | None:
        """None while every target answers; else what died or stopped answering. Never blocks."""
        import ray
        from ray.exceptions import RayActorError

        now = time.monotonic()
        for name, actor, method in self.targets:
            if name not in self.pending:
                self.pending[name] = (getattr(actor, method).remote(), now)
        refs = [ref for ref, _ in self.pending.values()]
        answered, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for name, (ref, sent) in list(self.pending.items()):
            if ref in answered:
                del self.pending[name]
                try:
                    ray.get(ref)
                except RayActorError as e:
                    return f"{name} died ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            elif now - sent > WATCHDOG_TIMEOUT_S:
                return f"{name} has not answered for {now - sent:.0f} s"
        return None


def run(settings: ServerSettings, store, models, held_socket=None) -> int:
    """`lastrank serve --ray`: connect to (or start) Ray, deploy, wait for SIGINT/SIGTERM (or a dead proxy or
    controller: ServeWatchdog), then take the application down (and the local cluster with it, if this process
    started one). `held_socket`: the port, bound by the CLI; closed just before Serve's proxy binds it, so
    none of Ray's own processes can take it meanwhile."""
    local_on_loopback = not settings.ray_address and settings.loopback
    if local_on_loopback:
        os.environ[LOOPBACK_ENV] = "0"  # read when ray is imported (just below): see LOOPBACK_ENV
    try:
        import ray
        from ray import serve
    except ImportError:
        raise LastrankError("--ray needs Ray Serve: pip install 'ray[serve]>=2.60,<3' (in a lastrank checkout: "
                            "pip install -e '.[ray]')") from None

    store_target = store_target_of(store)
    check(settings, store_target)
    env_vars = {PROXY_CALLBACK_ENV: os.environ.get(PROXY_CALLBACK_ENV, f"{__name__}.proxy_middlewares")}
    # log_to_driver: the replicas' output (lastrank's JSON access log, errors, model loading) shows here, each
    # line prefixed by Ray with the replica's name
    context = ray.init(address=settings.ray_address, include_dashboard=None if settings.ray_address else False,
                       log_to_driver=True, runtime_env={"env_vars": env_vars})
    node_ip = context.address_info.get("node_ip_address")
    if local_on_loopback and node_ip not in ("127.0.0.1", "::1"):  # Ray was imported before `run` set the variable
        ray.shutdown()
        raise LastrankError(f"--host {settings.host}: the local Ray cluster started on {node_ip}, not on loopback; "
                            f"set {LOOPBACK_ENV}=0 before Ray is imported")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs handlers of its own
        signal.signal(sig, lambda *_: stop.set())
    gcs = context.address_info.get("gcs_address") or context.address_info.get("address")
    where = f"the Ray cluster at {settings.ray_address}" if settings.ray_address else "a local Ray cluster"
    print(f"lastrank: ray: {where} (gcs {gcs}); deploying {len(models)} model(s) x {settings.replicas} "
          f"replica(s)" + (f" (autoscaling to {settings.max_replicas})" if settings.max_replicas else ""),
          file=sys.stderr, flush=True)
    failure = None
    not_deployed = None
    try:
        if held_socket is not None:
            held_socket.close()
        try:
            deploy(settings, store_target, models)
        except RuntimeError as e:  # Serve gave up: a deployment's replicas kept failing in their constructor
            not_deployed = deployment_failures() or str(e).splitlines()[0]  # raised after the cleanup below
        else:
            shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host
            print(f"lastrank: ray: serving on http://{shown_host}:{settings.port} (Ray Serve's proxy); "
                  f"ledger: {store.location}; Ctrl-C stops", file=sys.stderr, flush=True)
            if local_on_loopback:  # checked, not assumed: every port of the local cluster
                exposed = exposed_ports()
                print("lastrank: ray: every port of the local Ray cluster listens on loopback" if not exposed else
                      f"lastrank: ray: WARNING: these ports of the local Ray cluster listen beyond loopback: "
                      f"{', '.join(exposed)}", file=sys.stderr, flush=True)
            watchdog = ServeWatchdog()
            while not stop.wait(WATCHDOG_S):
                failure = watchdog.problem()
                if failure:
                    break
    finally:
        print("lastrank: ray: stopping" + (f": {failure}" if failure else ""), file=sys.stderr, flush=True)
        try:
            if failure:
                pass  # Serve's own shutdown waits on the controller and proxies; ray.shutdown() ends a local cluster
            elif settings.ray_address:
                serve.delete(APP_NAME)  # leave the cluster (and Serve's proxy) to whoever runs it
            else:
                serve.shutdown()
        finally:
            ray.shutdown()
    if not_deployed:  # e.g. a model that cannot load: no replica will ever serve it
        raise LastrankError(f"ray: {not_deployed}; exiting")
    if failure:
        raise LastrankError(f"ray: {failure}; exiting so that a supervisor restarts the server")
    return 0


def deployment_failures() -> str | None:
    """What Serve says of this application's failed deployments (each one's last message line, the
    replica's exception), or None if it cannot say."""
    from ray import serve

    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception:
        return None
    if app is None:
        return None
    lines = []
    for name, deployment in app.deployments.items():
        status = str(getattr(deployment.status, "value", deployment.status))
        message = [line.strip() for line in (deployment.message or "").splitlines() if line.strip()]
        if status not in ("HEALTHY", "UPDATING") and message:
            lines.append(f"{name}: {message[-1]}")
    return "; ".join(lines) or None


__all__ = ["APP_NAME", "Ingress", "ModelClient", "ModelReplica", "ModelSpec", "ReplicaFailedError", "application",
           "build", "deploy", "run"]
