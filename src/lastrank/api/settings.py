"""Server settings: one dataclass, built once by `lastrank serve` (or a test) and handed to `create_app`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

# Names a client may put in `model` besides --served-model-name and the checkpoint id.
DEFAULT_MODEL_ALIASES = ("jina-reranker-v3", "jinaai/jina-reranker-v3")


@dataclass
class ServerSettings:
    served_model_name: str = "jina-reranker-v3"
    model_id: str = ""  # what --model said (hub id or folder); also accepted in `model`
    model_aliases: tuple[str, ...] = ()  # extra accepted names (--model-alias)
    host: str = "127.0.0.1"
    port: int = 8080
    # auth: with no active key the server is open, which only a loopback host (or this flag) allows
    allow_unauthenticated: bool = False
    key_cache_ttl_s: float = 5.0  # a verified key is reused this long; revocation takes effect within it
    # billing
    price_per_1k_docs: float = 0.008  # USD
    # request limits (each gives 413 when exceeded)
    max_body_bytes: int = 32 * 1024 * 1024
    max_documents: int = 10_000
    max_document_chars: int = 200_000
    max_query_chars: int = 20_000
    # stalled connections (None disables): the request head must arrive within header_timeout_s of the
    # connection opening or of the previous response, the body within body_timeout_s (408); connections
    # past max_connections are refused with a 503
    header_timeout_s: float | None = 10.0
    body_timeout_s: float | None = 60.0
    max_connections: int | None = 1024
    # engine defaults when a request leaves them out (the reference rerank() defaults)
    default_max_doc_length: int = 2048
    default_max_query_length: int = 512
    # admission (scheduler) and deadline
    request_timeout_s: float | None = 120.0
    max_batch_tokens: int = 16384
    max_queued_tokens: int = 2_000_000
    max_queued_requests: int = 256
    # per-key rate limits for keys that set none (None: unlimited)
    default_requests_per_minute: int | None = None
    default_documents_per_minute: int | None = None
    extra: dict = field(default_factory=dict)

    def accepted_model_names(self) -> set[str]:
        names = {self.served_model_name, *DEFAULT_MODEL_ALIASES, *self.model_aliases}
        if self.model_id:
            names.add(self.model_id)
        return {n for n in names if n}

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
