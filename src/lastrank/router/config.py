"""The router's config file (`lastrank serve --config router.toml`): served models, each backed by providers.

    [[models]]
    name = "rerank"                 # the served name clients send as `model`
    aliases = ["rerank-english"]    # optional: more names it answers to
    policy = "priority"             # priority (list order) | cheapest | latency
    failure_threshold = 3           # optional: consecutive failures that open a provider's breaker
    cooldown_s = 10.0               # optional: how long an open breaker keeps the provider out before a probe
    price_per_1k_docs = 0.02        # optional: what a request to this model is billed, USD per 1,000 documents
                                    # (absent: --price-per-1k-docs; `--price rerank=USD` overrides it)

    [[models.providers]]
    name = "gpu-a"                  # shown in /v1/models, logs and the ledger
    dialect = "lastrank"            # local | lastrank | jina | cohere_v1 | cohere_v2 | tei | vllm | vllm_score
    base_url = "http://10.0.0.5:8080"   # the server root; the dialect's path is appended (path = ... overrides)
    model = "jina-reranker-v3"      # the upstream model name (local: the --model id to load here)
    api_key_env = "GPU_A_KEY"       # the NAME of an environment variable holding the upstream key
    timeout_s = 30.0
    max_concurrency = 32            # requests in flight to this provider at once
    cost_per_1k_docs = 0.0          # what this provider costs the operator (cheapest policy; /v1/models)
    score = "sigmoid"               # sigmoid | cosine; required except for lastrank (read from its /v1/models) and local
    probe_interval_s = 5.0          # while its breaker is open, check it this often in the background; 0: never.
                                    # Default 5 where the check is free (lastrank: GET /v1/models; tei, vllm,
                                    # vllm_score: GET /health), 0 where it would be a billed rerank (jina, cohere)

Everything is checked when the file is read: an unknown key, a wrong type, a missing required key or a bad value
is a ConfigError naming the key (e.g. "models[0].providers[1].timeout_s: must be a number > 0, got -1"). A key is
never read from the file: `api_key_env` names an environment variable, read when the provider starts. Upstream
URLs come only from here; a request cannot name one.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from lastrank.errors import InvalidRequestError, LastrankError
from lastrank.store.credit import to_nano

DIALECTS = ("local", "lastrank", "jina", "cohere_v1", "cohere_v2", "tei", "vllm", "vllm_score")
POLICIES = ("priority", "cheapest", "latency")
SCORE_RULES = ("sigmoid", "cosine")
# Dialects whose servers have a route that checks them without model work (providers.py, RemoteProvider.probe):
# their breakers are probed in the background by default. Jina's and Cohere's have none: a probe there is a tiny
# rerank that the provider bills, so it is off unless probe_interval_s asks for it.
FREE_PROBE_DIALECTS = ("lastrank", "tei", "vllm", "vllm_score")
DEFAULT_PROBE_INTERVAL_S = 5.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConfigError(LastrankError):
    """The router config file is unreadable or wrong; the message names the file and the key."""

    type = "config_error"


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    dialect: str
    model: str | None = None
    base_url: str | None = None  # None only for dialect "local"
    path: str | None = None  # None: the dialect's own route
    api_key_env: str | None = None
    timeout_s: float = 30.0
    max_concurrency: int = 64
    cost_per_1k_docs: float = 0.0
    score: str | None = None  # None: learned from the provider (lastrank's /v1/models, local's backend)
    probe_interval_s: float = 0.0  # background health probe of an open breaker; 0: none (config: the dialect's default)

    @property
    def remote(self) -> bool:
        return self.dialect != "local"


@dataclass(frozen=True)
class ModelConfig:
    name: str
    providers: tuple[ProviderConfig, ...]
    aliases: tuple[str, ...] = ()
    policy: str = "priority"
    failure_threshold: int = 3
    cooldown_s: float = 10.0
    price_per_1k_docs: float | None = None  # the client's price (billing); None: --price-per-1k-docs


@dataclass(frozen=True)
class RouterConfig:
    models: tuple[ModelConfig, ...]
    source: str = ""


# -- reading --------------------------------------------------------------------------------------------------

def load_config(path: str | Path) -> RouterConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read the router config {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the router config {path} is not UTF-8 text") from None
    return parse_config(text, source=str(path))


def parse_config(text: str, source: str = "<config>") -> RouterConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    r = _Reader(source)
    r.keys("", data, {"models"}, required={"models"})
    models_raw = data["models"]
    if not isinstance(models_raw, list) or not models_raw:
        raise r.error("models", "must be a non-empty array of tables ([[models]])")
    models = tuple(_model(r, f"models[{i}]", m) for i, m in enumerate(models_raw))
    names: dict[str, str] = {}
    for i, m in enumerate(models):
        for n in (m.name, *m.aliases):
            if n in names:
                raise r.error(f"models[{i}]", f"the name {n!r} is already used by {names[n]}")
            names[n] = f"models[{i}]"
    return RouterConfig(models=models, source=source)


def _model(r: _Reader, where: str, m) -> ModelConfig:
    if not isinstance(m, dict):
        raise r.error(where, "must be a table")
    r.keys(where, m, {"name", "aliases", "policy", "failure_threshold", "cooldown_s", "price_per_1k_docs",
                      "providers"}, required={"name", "providers"})
    name = r.string(where, m, "name")
    aliases = r.strings(where, m, "aliases")
    policy = r.choice(where, m, "policy", POLICIES, "priority")
    threshold = r.integer(where, m, "failure_threshold", 3)
    cooldown = r.number(where, m, "cooldown_s", 10.0)
    # what the client pays (docs/billing.md), distinct from a provider's cost_per_1k_docs (what it costs the operator)
    price = r.money(where, m, "price_per_1k_docs", None) if "price_per_1k_docs" in m else None
    raw = m["providers"]
    if not isinstance(raw, list) or not raw:
        raise r.error(f"{where}.providers", "must be a non-empty array of tables ([[models.providers]])")
    providers = tuple(_provider(r, f"{where}.providers[{i}]", p) for i, p in enumerate(raw))
    seen = set()
    for i, p in enumerate(providers):
        if p.name in seen:
            raise r.error(f"{where}.providers[{i}].name", f"{p.name!r} is used twice in this model")
        seen.add(p.name)
    declared = {p.score for p in providers if p.score is not None}
    if len(declared) > 1:
        raise r.error(where, f"its providers declare different score rules ({', '.join(sorted(declared))}); one "
                             "served model has one score rule: serve them under different names")
    return ModelConfig(name=name, providers=providers, aliases=aliases, policy=policy, failure_threshold=threshold,
                       cooldown_s=cooldown, price_per_1k_docs=price)


def _provider(r: _Reader, where: str, p) -> ProviderConfig:
    if not isinstance(p, dict):
        raise r.error(where, "must be a table")
    r.keys(where, p, {"name", "dialect", "model", "base_url", "path", "api_key_env", "timeout_s", "max_concurrency",
                      "cost_per_1k_docs", "score", "probe_interval_s"}, required={"name", "dialect"})
    name = r.string(where, p, "name")
    dialect = r.choice(where, p, "dialect", DIALECTS, None)
    model = r.string(where, p, "model", required=False)
    score = r.choice(where, p, "score", SCORE_RULES, None)
    if dialect == "local":
        if model is None:
            raise r.error(f"{where}.model", "a local provider needs the model to load (a --model id or folder)")
        for key in ("base_url", "path", "api_key_env", "probe_interval_s"):
            if key in p:
                raise r.error(f"{where}.{key}", "has no meaning for a local provider")
        base_url = None
    else:
        base_url = _url(r, f"{where}.base_url", r.string(where, p, "base_url"))
        if dialect != "lastrank" and score is None:
            raise r.error(f"{where}.score", f"a {dialect} provider must declare its model's score rule "
                                            "(sigmoid or cosine); only lastrank says it in /v1/models")
    path = r.string(where, p, "path", required=False)
    if path is not None and not path.startswith("/"):
        raise r.error(f"{where}.path", f"must start with '/', got {path!r}")
    key_env = r.string(where, p, "api_key_env", required=False)
    if key_env is not None and not _ENV_NAME.match(key_env):
        raise r.error(f"{where}.api_key_env", "must be the NAME of an environment variable (letters, digits, _), "
                                              "not a key")
    return ProviderConfig(
        name=name, dialect=dialect, model=model, base_url=base_url, path=path, api_key_env=key_env,
        timeout_s=r.number(where, p, "timeout_s", 30.0),
        max_concurrency=r.integer(where, p, "max_concurrency", 64),
        cost_per_1k_docs=r.money(where, p, "cost_per_1k_docs", 0.0),
        score=score,
        probe_interval_s=0.0 if dialect == "local" else r.number(
            where, p, "probe_interval_s", DEFAULT_PROBE_INTERVAL_S if dialect in FREE_PROBE_DIALECTS else 0.0,
            allow_zero=True),
    )


def _url(r: _Reader, where: str, url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise r.error(where, f"not a URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise r.error(where, "must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        # so a URL shown in a log or an error can never carry a credential
        raise r.error(where, "must not hold credentials, a query or a fragment; put the key in api_key_env")
    return url.rstrip("/")


class _Reader:
    """Typed reads with errors naming the key (`where.key`)."""

    def __init__(self, source: str):
        self.source = source

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {message}")

    def keys(self, where: str, table: dict, allowed: set, required: set = frozenset()) -> None:
        prefix = f"{where}." if where else ""
        for k in table:
            if k not in allowed:
                hint = "; keys are never read from the config file: use api_key_env" if k == "api_key" else ""
                raise self.error(prefix + k, f"unknown key (allowed: {', '.join(sorted(allowed))}){hint}")
        for k in sorted(required):
            if k not in table:
                raise self.error(prefix + k, "is required")

    def string(self, where, table, key, required=True) -> str | None:
        if key not in table:
            if required:
                raise self.error(f"{where}.{key}", "is required")
            return None
        v = table[key]
        if not isinstance(v, str) or not v.strip():
            raise self.error(f"{where}.{key}", f"must be a non-empty string, got {v!r}")
        return v

    def strings(self, where, table, key) -> tuple[str, ...]:
        v = table.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise self.error(f"{where}.{key}", f"must be an array of non-empty strings, got {v!r}")
        return tuple(v)

    def choice(self, where, table, key, choices, default):
        if key not in table:
            if default is None and key == "dialect":
                raise self.error(f"{where}.{key}", "is required")
            return default
        v = table[key]
        if v not in choices:
            raise self.error(f"{where}.{key}", f"must be one of {', '.join(choices)}, got {v!r}")
        return v

    def number(self, where, table, key, default, allow_zero=False) -> float:
        v = table.get(key, default)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or (allow_zero and v == 0))
        if not ok:
            raise self.error(f"{where}.{key}", f"must be a number {'>= 0' if allow_zero else '> 0'}, got {v!r}")
        return float(v)

    def money(self, where, table, key, default) -> float:
        """USD (>= 0) that the ledger can count: at most 9 decimals and 1e9 (store/credit.py's nano-dollars), so a
        price it could not charge is this line at start, not a 400 on every request."""
        v = self.number(where, table, key, default, allow_zero=True)
        try:
            to_nano(v, "it")
        except InvalidRequestError as e:
            raise self.error(f"{where}.{key}", e.message) from None
        return v

    def integer(self, where, table, key, default) -> int:
        v = table.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise self.error(f"{where}.{key}", f"must be an integer >= 1, got {v!r}")
        return v
