"""Jina Reranker V3 (jinaai/jina-reranker-v3), the listwise family: prompt.py (the exact prompt bytes),
plan.py (truncation by decode round-trip and 125-document / token-budget blocks), backend.py (the Backend:
one forward per block, the block-weighted query merge)."""

from lastrank.families.jina_v3.backend import JinaV3Backend, load

__all__ = ["JinaV3Backend", "load"]
