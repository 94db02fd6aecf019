"""Providers: what the router sends a request to. Each has a `Breaker`, a concurrency cap and an observed latency.

    RemoteProvider   an httpx.AsyncClient speaking one dialect to one upstream (another lastrank, Jina, Cohere
                     v1/v2, TEI, vLLM's /v1/rerank or /score): the internal RerankRequest is written in that
                     dialect and the answer read back into a RerankResult with the same indices and scores
    LocalProvider    a model loaded in this process, behind the usual Scheduler (engine/scheduler.py)

`call(request, timeout_s)` returns a RerankResult or raises:
    ProviderFailed             the provider failed and nothing was billed by it for an answer we hold: connect
                               error, timeout, 5xx, 429, 408, or 401/402/403/404 (the operator's configuration or
                               credit, not the client's request); the router tries the next provider
    InvalidRequestError, ...   the request itself is wrong (another 4xx): the client's error, never retried
    ModelError                 a 200 whose body cannot be read: the provider answered (and may have billed
                               it), so it is never retried elsewhere

Writing the request: the wire bodies are built with the dialects' own pydantic models (api/dialects/*.Request),
the ones this server parses, so the field names are written once; the response is read here (the three
shapes: `results` [{index, relevance_score}] for Jina, Cohere and vLLM's rerank; TEI's bare array
[{index, score}]; vLLM's /score `data` [{index, score}]).

Scores: every dialect but TEI returns the model's relevance score as it is. TEI returns it mapped to [0, 1]
(Capabilities.unit_score), which is undone here with the provider's score rule (cosine: 2s - 1). The router
sorts by score (stable, so ties keep the provider's order), then applies score_threshold and top_n itself, so
a dialect that cannot carry them still gives the client what it asked for.

Health probes: while a remote provider's breaker is open, a background task checks it every probe_interval_s
(config.py; 0: never) with the cheapest request its dialect has: lastrank's GET /v1/models (which also learns its
score rule), TEI's and vLLM's GET /health, else a one-document rerank (Jina, Cohere: billed, so off by default).
An answer closes the breaker; a failure keeps it open for another cooldown. /v1/models shows the last probe.

Keys: `api_key_env` names an environment variable; its value is read once at start() into the client's
`Authorization: Bearer` header and is never logged, shown or stored. A provider without api_key_env sends no
Authorization header at all (a client's own key is never forwarded: requests reach here as RerankRequests).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import time
from contextlib import suppress
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from lastrank.api.app import make_scheduler
from lastrank.api.dialects import cohere, jina, tei
from lastrank.engine.backend import Capabilities
from lastrank.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    ModelError,
    OverloadedError,
    PayloadTooLargeError,
)
from lastrank.families import detect_family, load_backend
from lastrank.model.resolve import resolve_checkpoint
from lastrank.router.breaker import Breaker
from lastrank.router.config import ConfigError, ModelConfig, ProviderConfig
from lastrank.types import RankedDocument, RerankRequest, RerankResult, TruncationReport, Usage

log = logging.getLogger("lastrank.router")

# The free health route of a dialect's server (probe); the others are probed with a tiny rerank.
HEALTH_PATHS = {"tei": "/health", "vllm": "/health", "vllm_score": "/health"}
# A probe's timeout: short, since it asks for no model work; within the provider's own timeout_s.
PROBE_TIMEOUT_S = 5.0
PATHS = {"lastrank": "/v1/rerank", "jina": "/v1/rerank", "cohere_v1": "/v1/rerank", "cohere_v2": "/v2/rerank",
         "tei": "/rerank", "vllm": "/v1/rerank", "vllm_score": "/score"}
# Smoothing of the observed latency (the `latency` policy): the last ~10 answers weigh most.
LATENCY_ALPHA = 0.2
# A 429 without Retry-After keeps the provider out this long.
DEFAULT_HOLD_S = 1.0
# Retry-After is honoured up to this (a provider asking for an hour is out for this long, then probed).
MAX_HOLD_S = 300.0


class ProviderFailed(Exception):
    """A provider failure the router may retry elsewhere. The message never holds a key or a URL.
    hold: the provider asked for time (429, Retry-After) and is not unhealthy: nothing is sent to it until then,
          and its breaker does not count it;
    skip: it refused before doing anything (a local queue that is full): try the next, no verdict on its health;
    otherwise: a failure that counts toward its breaker (and a Retry-After, if any, is honoured too)."""

    def __init__(self, message: str, retry_after: float | None = None, hold: bool = False, skip: bool = False):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.hold = hold
        self.skip = skip


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), capped at MAX_HOLD_S; None when absent or bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_HOLD_S)


class Provider:
    """What the router needs of every provider (module docstring)."""

    def __init__(self, config: ProviderConfig, model: ModelConfig, clock=time.monotonic):
        self.config = config
        self.name = config.name
        self.breaker = Breaker(model.failure_threshold, model.cooldown_s, clock=clock)
        self.score_rule: str | None = config.score
        # The served model's rule, once the router has settled it at start (RoutedRunner.start): a provider learnt
        # later (down at start) must match it, or it would mix two scales under one model name.
        self.model_score: str | None = None
        self.capabilities: Capabilities | None = None  # full capabilities where the provider says them
        self.in_flight = 0
        self.latency_s: float | None = None  # smoothed seconds per successful answer
        self.answered = 0
        self.failed = 0
        self._slots = asyncio.Semaphore(config.max_concurrency)

    @property
    def full(self) -> bool:
        return self.in_flight >= self.config.max_concurrency

    def observe(self, seconds: float) -> None:
        self.latency_s = seconds if self.latency_s is None else (
            (1 - LATENCY_ALPHA) * self.latency_s + LATENCY_ALPHA * seconds)

    def unsupported(self, request: RerankRequest) -> str | None:
        """Why this provider cannot carry `request` (a feature its dialect has no field for), or None."""
        return None

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def call(self, request: RerankRequest, timeout_s: float | None) -> RerankResult:
        raise NotImplementedError

    def describe(self) -> dict:
        """/v1/models' entry for this provider: never a key, never a URL."""
        out = {"name": self.name, "dialect": self.config.dialect, "score": self.score_rule,
               "health": self.breaker.as_dict(), "in_flight": self.in_flight,
               "max_concurrency": self.config.max_concurrency, "cost_per_1k_docs": self.config.cost_per_1k_docs,
               "timeout_s": self.config.timeout_s, "answered": self.answered, "failed": self.failed,
               "latency_ms": None if self.latency_s is None else round(self.latency_s * 1000.0, 2)}
        if self.config.model:
            out["model"] = self.config.model
        return out


class RemoteProvider(Provider):
    def __init__(self, config: ProviderConfig, model: ModelConfig, clock=time.monotonic, environ=os.environ,
                 transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(config, model, clock)
        self.url = config.base_url + (config.path or PATHS[config.dialect])
        self._environ = environ
        self._transport = transport  # tests: an in-process transport
        self.client: httpx.AsyncClient | None = None
        self._probe_task: asyncio.Task | None = None
        self.probes = 0  # background probes sent
        self.probes_failed = 0  # of which found it still down
        self.last_probe: dict | None = None  # {"at": UTC time, "ok": bool, "error": why not ok}

    async def start(self) -> None:
        if self.client is not None:
            return
        headers = {"accept": "application/json"}
        env = self.config.api_key_env
        if env is not None:
            key = self._environ.get(env)
            if not key:
                raise ConfigError(f"provider {self.name!r}: the environment variable {env} (api_key_env) is not set "
                                  "or empty")
            headers["authorization"] = f"Bearer {key}"
        # httpx logs every request at INFO, with its URL: one line per routed request under --log-level info
        logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))
        cap = self.config.max_concurrency
        self.client = httpx.AsyncClient(headers=headers, transport=self._transport, follow_redirects=False,
                                        limits=httpx.Limits(max_connections=cap, max_keepalive_connections=cap))
        if self.config.dialect == "lastrank":
            try:
                await self.learn(timeout_s=min(self.config.timeout_s, 10.0))
            except ProviderFailed as e:  # down at start: the breaker takes it out and a request probes it later
                log.warning("provider %s: cannot read its /v1/models at start (%s); it is out until it answers",
                            self.name, e.message)
                self.breaker.trip()
        if self.config.probe_interval_s > 0:
            self._probe_task = asyncio.create_task(self._probe_loop(), name=f"lastrank router probe {self.name}")

    async def stop(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._probe_task
            self._probe_task = None
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    # -- background health probes ---------------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.probe_interval_s)
            try:
                await self.probe()
            except asyncio.CancelledError:
                raise
            except Exception:  # a probe must never end the loop (nor take the server down)
                log.exception("provider %s: the health probe failed unexpectedly", self.name)

    async def probe(self) -> bool | None:
        """Check an open provider once (module docstring): True if it answered (the breaker closes), False if
        not (it stays open for another cooldown), None if there was nothing to probe (closed, a probe already
        in flight, or held by a Retry-After)."""
        if not self.breaker.begin_probe():
            return None
        timeout_s = min(self.config.timeout_s, PROBE_TIMEOUT_S)
        self.probes += 1
        error = None
        try:
            if self.config.dialect == "lastrank":
                await self.learn(timeout_s=timeout_s)
            elif self.config.dialect in HEALTH_PATHS:
                response = await self._send("GET", self.config.base_url + HEALTH_PATHS[self.config.dialect], None,
                                            timeout_s)
                if response.status_code != 200:
                    error = f"{HEALTH_PATHS[self.config.dialect]} answered {response.status_code}"
            else:
                await self.call(RerankRequest(query="health check", documents=["health check"]), timeout_s)
        except ProviderFailed as e:
            error = e.message
        except Exception as e:  # a 4xx to the tiny rerank, an unreadable answer, a changed score rule: not healthy
            error = getattr(e, "message", None) or type(e).__name__
        except BaseException:
            self.breaker.release()  # cancelled (shutting down): no verdict
            raise
        self.last_probe = {"at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "ok": error is None}
        if error is None:
            self.breaker.success()
            log.info("provider %s: the health probe got an answer; back in service", self.name)
            return True
        self.last_probe["error"] = error
        self.probes_failed += 1
        self.breaker.probe_failed()
        return False

    # -- lastrank upstreams say what their model is ----------------------------------------------------------

    async def learn(self, timeout_s: float) -> None:
        """Read the upstream lastrank's /v1/models entry of our model: its capabilities, so its score rule."""
        response = await self._send("GET", self.config.base_url + "/v1/models", None, timeout_s)
        if response.status_code != 200:
            raise ProviderFailed(f"/v1/models answered {response.status_code}")
        try:
            entries = response.json()["data"]
            wanted = self.config.model
            entry = next((e for e in entries if wanted is None or e["id"] == wanted or wanted in e.get("aliases", ())),
                         None)
            if entry is None or (wanted is None and len(entries) != 1):
                raise ConfigError(f"provider {self.name!r}: the upstream serves "
                                  f"{', '.join(repr(e['id']) for e in entries)}; set `model` to one of them")
            fields = {f.name for f in dataclasses.fields(Capabilities)}
            caps = Capabilities(**{k: v for k, v in entry.items() if k in fields})
        except ConfigError:
            raise
        except (ValueError, KeyError, TypeError, StopIteration) as e:
            raise ProviderFailed(f"/v1/models is not a lastrank model list ({type(e).__name__})") from None
        if self.config.score is not None and caps.score != self.config.score:
            raise ConfigError(f"provider {self.name!r}: the config says score = {self.config.score!r} but the upstream "
                              f"model's score rule is {caps.score!r}")
        if self.model_score is not None and caps.score != self.model_score:
            raise ProviderFailed(f"its model's score rule is {caps.score!r}, not the served model's "
                                 f"{self.model_score!r}")
        self.capabilities = caps
        self.score_rule = caps.score

    # -- one request ----------------------------------------------------------------------------------------

    def unsupported(self, request: RerankRequest) -> str | None:
        d, o = self.config.dialect, request.options
        if request.images:
            return "images are not sent to remote providers"
        if d == "lastrank":
            return None if o.truncate else "truncate=false is not carried to a lastrank provider"
        if o.return_embeddings:
            return f"the {d} dialect has no return_embeddings"
        if o.chunking == "chunk":  # (Cohere v1's max_chunks_per_doc is not the same windows and overlap)
            return f"the {d} dialect has no chunk mode"
        if o.return_spans:
            return f"the {d} dialect has no return_spans"
        if o.instruction is not None:
            return f"the {d} dialect has no instruction"
        if not o.truncate and d != "tei":
            return f"the {d} dialect has no truncate=false"
        if o.max_doc_length is not None and d not in ("cohere_v2",):
            return f"the {d} dialect has no max_doc_length"
        if o.max_query_length is not None:
            return f"the {d} dialect has no max_query_length"
        return None

    def body(self, request: RerankRequest) -> dict:
        """The wire body of `request` in this provider's dialect (module docstring)."""
        d, model, r, o = self.config.dialect, self.config.model, request, request.options
        if d == "lastrank":
            # every option the lastrank (Jina) body carries, by its own name; None and False are the defaults
            # there too, so they are left out (truncate=false never comes here: unsupported)
            sent = {k: v for k, v in dataclasses.asdict(o).items()
                    if k in jina.Request.model_fields and v is not None and v is not False}
            wire = jina.Request(model=model, query=r.query, documents=r.documents, return_documents=False, **sent)
        elif d in ("jina", "vllm", "cohere_v1"):  # one body: Cohere v1's fields are Jina's (api/dialects/jina.py)
            wire = jina.Request(model=model, query=r.query, documents=r.documents, top_n=o.top_n,
                                return_documents=False)
        elif d == "cohere_v2":
            wire = cohere.Request(model=model, query=r.query, documents=r.documents, top_n=o.top_n,
                                  max_tokens_per_doc=o.max_doc_length)
        elif d == "tei":
            wire = tei.Request(query=r.query, texts=r.documents, truncate=o.truncate, raw_scores=False,
                               model=model)
        else:  # vllm_score
            return {**({"model": model} if model else {}), "text_1": r.query, "text_2": list(r.documents)}
        return wire.model_dump(exclude_none=True)

    async def call(self, request: RerankRequest, timeout_s: float | None) -> RerankResult:
        if self.score_rule is None:  # a lastrank provider that was down at start: learn its rule first
            try:
                await self.learn(timeout_s=timeout_s or self.config.timeout_s)
            except ConfigError as e:  # the operator's config, not the client's request: the next provider
                raise ProviderFailed(e.message) from None
        response = await self._send("POST", self.url, self.body(request), timeout_s)
        status = response.status_code
        if status == 200:
            return self.parse(response, request)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if status == 429:
            raise ProviderFailed("429 (rate limited)", retry_after=retry_after or DEFAULT_HOLD_S, hold=True)
        if status >= 500 or status < 400 or status in (401, 402, 403, 404, 408):
            # 401/403/404, or a redirect (never followed): the operator's key, URL or model name is wrong for this
            # provider, not the client's request; 402: the operator's own credit there ran out
            raise ProviderFailed(f"answered {status}", retry_after=retry_after)
        message = f"the provider {self.name!r} refused the request ({status}): {_error_message(response)}"
        if status == 413:
            raise PayloadTooLargeError(message)
        raise InvalidRequestError(message)

    async def _send(self, method: str, url: str, body: dict | None, timeout_s: float | None) -> httpx.Response:
        if self.client is None:
            raise ProviderFailed("not started")
        try:
            return await self.client.request(method, url, json=body, timeout=timeout_s)
        except httpx.TimeoutException:
            raise ProviderFailed(f"no answer within {timeout_s:.3g} s") from None
        except httpx.TransportError as e:  # connect refused, reset, dropped mid-answer: no answer we hold
            raise ProviderFailed(f"connection failed ({type(e).__name__})") from None

    def parse(self, response: httpx.Response, request: RerankRequest) -> RerankResult:
        """The provider's 200 as a RerankResult. A body that cannot be read is a ModelError (never retried:
        the provider answered, and may have billed it)."""
        n = len(request.documents)
        try:
            data = response.json()
            items, tokens = _items(self.config.dialect, data, response.headers)
            results, seen = [], set()
            for item in items:
                index = item["index"]
                score = item["relevance_score"] if "relevance_score" in item else item["score"]
                if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n or index in seen:
                    raise ValueError(f"index {index!r} is not one of the documents sent, once")
                if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                    raise ValueError(f"score {score!r} is not a finite number")
                seen.add(index)
                if self.config.dialect == "tei" and self.score_rule == "cosine":
                    score = 2.0 * score - 1.0  # TEI's [0, 1] back to the cosine (Capabilities.unit_score)
                span = item.get("span")
                results.append(RankedDocument(index=index, relevance_score=float(score),
                                              document=request.documents[index], embedding=item.get("embedding"),
                                              span=tuple(span) if span is not None else None))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelError(f"the provider {self.name!r} answered 200 with a body that is not a "
                             f"{self.config.dialect} rerank answer: {e}") from None
        o = request.options
        expected = n if o.top_n is None else min(o.top_n, n)
        if o.score_threshold is None and len(results) < expected and self.config.dialect != "lastrank":
            # a provider that dropped documents (its own threshold or cap) cannot give the client its ranking
            raise ModelError(f"the provider {self.name!r} returned {len(results)} results for {expected} asked")
        results.sort(key=lambda r: -r.relevance_score)  # stable: ties keep the provider's order
        if o.score_threshold is not None:
            results = [r for r in results if r.relevance_score >= o.score_threshold]
        if o.top_n is not None:
            results = results[:o.top_n]
        usage = Usage(documents=n, prompt_tokens=tokens, max_doc_length=o.max_doc_length or 0,
                      max_query_length=o.max_query_length or 0)
        return RerankResult(results=results, usage=usage, request_id=request.request_id,
                            truncation=_reported_truncation(response.headers, data, n))

    def describe(self) -> dict:
        probe = {"interval_s": self.config.probe_interval_s, "sent": self.probes, "last": self.last_probe}
        return {**super().describe(), "remote": True, "probe": probe}


def _items(dialect: str, data: Any, headers) -> tuple[list[dict], int]:
    """(result items, prompt tokens) from a 200 body of `dialect`."""
    if dialect == "tei":
        if not isinstance(data, list):
            raise ValueError("a TEI answer is a JSON array")
        tokens = headers.get("x-compute-tokens")
        return data, int(tokens) if tokens and tokens.isdigit() else 0
    if not isinstance(data, dict):
        raise ValueError("the answer is not a JSON object")
    items = data["data"] if dialect == "vllm_score" else data["results"]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError("results must be an array of objects")
    usage = data.get("usage") or {}
    meta = data.get("meta") or {}
    tokens = usage.get("prompt_tokens") or usage.get("total_tokens") or (meta.get("tokens") or {}).get("input_tokens")
    return items, int(tokens) if isinstance(tokens, int) and not isinstance(tokens, bool) else 0


# A provider's warnings are passed on to the client as they are, within these bounds.
MAX_WARNINGS, MAX_WARNING_CHARS = 10, 500


def _reported_truncation(headers, data: Any, documents: int) -> TruncationReport | None:
    """A lastrank upstream's own truncation report, in whichever dialect it was spoken to: its
    X-Lastrank-Truncated-Documents and X-Lastrank-Query-Truncated headers, and its meta.warnings where the answer
    has them (Jina and Cohere shapes; TEI's bare array has none, so the headers are said in words). None from a
    server that sends no such header (Jina's, Cohere's, TEI's, vLLM's own do not report truncation)."""
    count = headers.get("x-lastrank-truncated-documents")
    if count is None or not count.strip().isdigit():
        return None
    cut = min(int(count), documents)
    query = headers.get("x-lastrank-query-truncated", "").strip().lower() == "true"
    meta = data.get("meta") if isinstance(data, dict) else None
    said = meta.get("warnings") if isinstance(meta, dict) else None
    if isinstance(said, list) and all(isinstance(w, str) for w in said):
        warnings = [w[:MAX_WARNING_CHARS] for w in said[:MAX_WARNINGS]]
    else:
        warnings = []
        if cut:
            warnings.append(f"{cut} of {documents} documents were truncated by the provider before ranking")
        if query:
            warnings.append("the query was truncated by the provider before ranking")
    return TruncationReport(documents=cut, query=query, warnings=warnings)


def _error_message(response: httpx.Response, limit: int = 300) -> str:
    """The upstream's error message in a few words (the `detail`, `message` or `error.message` of its body)."""
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        return response.text[:limit] or response.reason_phrase
    if isinstance(body, dict):
        for candidate in (body.get("detail"), body.get("message"), (body.get("error") or {}).get("message")
                          if isinstance(body.get("error"), dict) else body.get("error")):
            if isinstance(candidate, str):
                return candidate[:limit]
    return json.dumps(body)[:limit]


class LocalProvider(Provider):
    """A model loaded in this process, run by its own Scheduler (the server's usual local engine)."""

    def __init__(self, config: ProviderConfig, model: ModelConfig, settings, clock=time.monotonic, scheduler=None):
        super().__init__(config, model, clock)
        self.settings = settings
        self.scheduler = scheduler  # tests: a ready ModelRunner

    async def start(self) -> None:
        if self.scheduler is None:
            model_id, s = self.config.model, self.settings
            path = resolve_checkpoint(model_id)
            family = detect_family(path)

            def load():
                backend = load_backend(model_id, device=s.device, dtype=s.dtype, path=path, family=family)
                backend.warmup()
                return backend

            self.scheduler = make_scheduler(await asyncio.to_thread(load), s)
        await self.scheduler.start()
        self.capabilities = self.scheduler.capabilities
        if self.config.score is not None and self.capabilities.score != self.config.score:
            raise ConfigError(f"provider {self.name!r}: the config says score = {self.config.score!r} but the model's "
                              f"score rule is {self.capabilities.score!r}")
        self.score_rule = self.capabilities.score

    async def stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()

    async def call(self, request: RerankRequest, timeout_s: float | None) -> RerankResult:
        if self.scheduler.admission_error() is not None:
            raise ProviderFailed("its queue is full", skip=True)
        try:
            return await self.scheduler.submit(request)
        except OverloadedError as e:  # refused before any work began: another provider may take it
            raise ProviderFailed(f"refused: {e.message}", skip=True) from None
        except (InvalidRequestError, DeadlineExceededError):
            raise
        except ModelError as e:  # nothing was answered or billed
            raise ProviderFailed(f"model error: {e.message}") from None

    def describe(self) -> dict:
        return {**super().describe(), "remote": False}
