"""Wire dialects: each translates its request to the one internal request and the result back."""

from lastrank.api.dialects import cohere, jina, tei

DIALECTS = {m.NAME: m for m in (jina, cohere, tei)}

__all__ = ["DIALECTS", "cohere", "jina", "tei"]
