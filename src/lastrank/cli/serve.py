"""`lastrank serve`: the rerank API server (FastAPI + uvicorn).

The model loads in the background after the port opens: /health answers at once, /ready says 503
until the model is loaded and warmed up, then 200.

Auth: when the store holds an active API key, every inference route needs `Authorization: Bearer`.
With no key the server runs open, which is allowed only on a loopback host unless
`--allow-unauthenticated` is given.
"""

from __future__ import annotations

import argparse
import logging
import sys

from lastrank.cli.argtypes import nonneg_float, positive_int
from lastrank.errors import LastrankError




def register(sub: argparse._SubParsersAction) -> None:
    from lastrank.api.settings import ServerSettings
    from lastrank.cli.keys import add_db_argument

    d = ServerSettings()
    p = sub.add_parser(
        "serve", help="run the rerank API server",
        description="Serve a checkpoint over HTTP: Jina and Cohere v1 on /v1/rerank, Cohere v2 on /v2/rerank, "
                    "TEI (or Jina) on /rerank; /v1/models, /health, /ready, /metrics, /docs.")
    p.add_argument("--model", default="jinaai/jina-reranker-v3", help="hub id or local checkpoint folder")
    p.add_argument("--host", default=d.host, help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="default: %(default)s")
    add_db_argument(p)
    p.add_argument("--served-model-name", default=d.served_model_name,
                   help="the name in responses and /v1/models (default: %(default)s). Requests may name it, "
                        "'jina-reranker-v3', 'jinaai/jina-reranker-v3', the --model value, or a --model-alias")
    p.add_argument("--model-alias", action="append", default=[], metavar="NAME",
                   help="another model name to accept (repeatable), e.g. a client's hard-coded default")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: %(default)s)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="run without API keys on a non-loopback address")
    p.add_argument("--price-per-1k-docs", type=nonneg_float, default=d.price_per_1k_docs,
                   help="USD per 1,000 documents, for the ledger's cost column (default: %(default)s)")
    g = p.add_argument_group("limits")
    g.add_argument("--max-body-bytes", type=positive_int, default=d.max_body_bytes, help="default: %(default)s (413)")
    g.add_argument("--max-documents", type=positive_int, default=d.max_documents,
                   help="documents per request (default: %(default)s; 413)")
    g.add_argument("--max-document-chars", type=positive_int, default=d.max_document_chars,
                   help="characters per document (default: %(default)s; 413)")
    g.add_argument("--max-query-chars", type=positive_int, default=d.max_query_chars,
                   help="characters of the query (default: %(default)s; 413)")
    g.add_argument("--request-timeout-s", type=nonneg_float, default=d.request_timeout_s,
                   help="per-request deadline; 0 disables it (default: %(default)s; 504)")
    g.add_argument("--max-batch-tokens", type=positive_int, default=d.max_batch_tokens,
                   help="tokens per model batch (default: %(default)s)")
    g.add_argument("--max-queued-tokens", type=positive_int, default=d.max_queued_tokens,
                   help="admission: tokens queued (default: %(default)s; 503 when full)")
    g.add_argument("--max-queued-requests", type=positive_int, default=d.max_queued_requests,
                   help="admission: requests queued (default: %(default)s; 503 when full)")
    g.add_argument("--default-requests-per-minute", type=positive_int, default=None, metavar="R",
                   help="rate limit for keys created without one (default: none; 429)")
    g.add_argument("--default-documents-per-minute", type=positive_int, default=None, metavar="D",
                   help="document rate limit for keys created without one (default: none; 429)")
    g.add_argument("--header-timeout-s", type=nonneg_float, default=d.header_timeout_s,
                   help="close a connection whose request head is not in within this many seconds; 0 disables "
                        "(default: %(default)s)")
    g.add_argument("--body-timeout-s", type=nonneg_float, default=d.body_timeout_s,
                   help="time to receive a request body; 0 disables (default: %(default)s; 408)")
    g.add_argument("--max-connections", type=positive_int, default=d.max_connections,
                   help="open connections; more are refused (default: %(default)s; 503)")
    g.add_argument("--key-cache-s", type=nonneg_float, default=d.key_cache_ttl_s,
                   help="reuse a verified API key this long; a revoked key works until it ends; 0 disables "
                        "(default: %(default)s)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--no-access-log", action="store_true", help="do not log each request")
    p.set_defaults(func=run)


def build_settings(args: argparse.Namespace):
    from lastrank.api.settings import ServerSettings

    return ServerSettings(
        served_model_name=args.served_model_name,
        model_id=str(args.model),
        model_aliases=tuple(args.model_alias),
        host=args.host,
        port=args.port,
        allow_unauthenticated=args.allow_unauthenticated,
        price_per_1k_docs=args.price_per_1k_docs,
        max_body_bytes=args.max_body_bytes,
        max_documents=args.max_documents,
        max_document_chars=args.max_document_chars,
        max_query_chars=args.max_query_chars,
        request_timeout_s=args.request_timeout_s or None,
        max_batch_tokens=args.max_batch_tokens,
        max_queued_tokens=args.max_queued_tokens,
        max_queued_requests=args.max_queued_requests,
        default_requests_per_minute=args.default_requests_per_minute,
        default_documents_per_minute=args.default_documents_per_minute,
        header_timeout_s=args.header_timeout_s or None,
        body_timeout_s=args.body_timeout_s or None,
        max_connections=args.max_connections,
        key_cache_ttl_s=args.key_cache_s,
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from lastrank.api.app import create_app, http_protocol
    from lastrank.cli.keys import open_store

    settings = build_settings(args)
    store = open_store(args)
    keys = store.has_active_keys()
    if not keys and not settings.loopback and not settings.allow_unauthenticated:
        store.close()
        raise LastrankError(
            f"refusing to serve on {settings.host} without API keys: anyone who can reach it could use it. "
            f"Create a key (lastrank keys create --name NAME --db {store.path}), listen on 127.0.0.1, "
            "or pass --allow-unauthenticated")

    # Fail now, with the loader's message, if the checkpoint cannot be found (a download happens here too);
    # loading the weights then runs in the background while /health already answers.
    from lastrank.model.resolve import resolve_checkpoint  # torch-free: a bad --model fails before torch loads

    try:
        resolve_checkpoint(args.model)
    except BaseException:
        store.close()
        raise

    def load_engine():
        from lastrank import Reranker

        reranker = Reranker(args.model, device=args.device, dtype=args.dtype)
        reranker.backend.warmup()
        print(f"lastrank: model {reranker.model_id} loaded and warmed up ({args.device}, {args.dtype}); ready",
              file=sys.stderr, flush=True)
        return reranker.backend

    app = create_app(settings, store, load_engine=load_engine)
    shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host
    if keys:
        mode = "API keys required (Authorization: Bearer <key>)"
    elif settings.loopback:
        mode = "OPEN: no API keys exist, so anyone on this machine may call it (loopback only)"
    else:
        mode = "OPEN: no API keys and --allow-unauthenticated: anyone who can reach this address may call it"
    print(f"lastrank: serving {settings.served_model_name} from {args.model} on http://{shown_host}:{settings.port}",
          file=sys.stderr)
    print(f"lastrank: auth: {mode}; once a key exists, keys are required", file=sys.stderr)
    print(f"lastrank: ledger: {store.path}; /ready turns 200 once the model is loaded", file=sys.stderr, flush=True)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, http=http_protocol(settings),
                    access_log=not args.no_access_log, timeout_graceful_shutdown=30)
    finally:
        store.close()
    return 0
