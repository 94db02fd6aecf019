"""lastrank: exact, fast, self-hosted Jina Reranker V3."""

from lastrank.errors import LastrankError
from lastrank.types import RankedDocument, RerankRequest, RerankResult, Usage

__version__ = "0.1.0"

__all__ = ["Reranker", "Client", "LastrankError", "RankedDocument", "RerankRequest", "RerankResult", "Usage"]


def __getattr__(name: str):
    # Lazy: `import lastrank` must not pay for torch (the CLI's `keys`/`usage` commands never need it).
    if name == "Reranker":
        from lastrank.reranker import Reranker

        return Reranker
    if name == "Client":
        from lastrank.client import Client

        return Client
    raise AttributeError(name)
