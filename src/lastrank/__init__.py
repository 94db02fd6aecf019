"""lastrank: a self-hosted rerank engine and API server for open rerankers (see `lastrank.cli.DESCRIPTION`)."""

import importlib

from lastrank.errors import LastrankError
from lastrank.types import RankedDocument, RerankOptions, RerankRequest, RerankResult, Usage

__version__ = "0.1.0"

__all__ = ["Reranker", "Client", "LastrankError", "RankedDocument", "RerankOptions", "RerankRequest", "RerankResult", "Usage"]

# Imported on first use: `import lastrank` (and so the CLI's light commands) must not pay for numpy or httpx.
_LAZY = {"Reranker": "lastrank.reranker", "Client": "lastrank.client"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(name)
    return getattr(importlib.import_module(_LAZY[name]), name)
