"""A deterministic toy pointwise family for tests that need relevance random weights cannot show.

`KeywordBackend`: one token per word (\\S+, with its character span as the token offset), raw score = how
many distinct query words (common English function words left out) the document's tokens hold after
truncation to max_doc_length, relevance_score = sigmoid(raw) by the one score rule. Built on engine/pairs.py like the real pointwise families, so it
plans, blocks, bills and truncates as they do.
"""

from __future__ import annotations

import re

import numpy as np

from lastrank.engine.backend import Capabilities
from lastrank.engine.pairs import EncodedPairs, PairwiseBackend

WORD = re.compile(r"\S+")
STOP = frozenset("a an and are as at be by can do does for from how in is it of on or the to was what when where "
                 "which who why with you".split())


class KeywordBackend(PairwiseBackend):
    """A toy pointwise family (module docstring). Token ids are word ids (case and edge punctuation
    ignored), 0 separates query from document in a sequence."""

    def __init__(self, max_doc_length: int = 20, offsets: bool = True, overhead: int = 0, window: bool = True):
        self.capabilities = Capabilities(
            family="keyword-toy", architecture="word overlap", listwise=False, score="sigmoid",
            raw_score="query words in the document", instruction=False, embedding_dim=None,
            context_length=10_000, max_doc_length=max_doc_length, max_query_length=64)
        self.vocab: dict[str, int] = {}
        self.has_offsets = offsets
        # `overhead` tokens of max_doc_length go to a marker of the family's own (as special tokens do);
        # window=False: chunk_window is not overridden to subtract them (a family bug, for one test)
        self.overhead = overhead
        self.subtracts_overhead = window
        self.scored: list[list[int]] = []  # every sequence run, for the tests
        self.stop_ids = {self.ids(w)[0] for w in STOP}

    def ids(self, text: str) -> list[int]:
        return [self.vocab.setdefault(w.lower().strip(".,!?"), len(self.vocab) + 1) for w in WORD.findall(text)]

    def token_offsets(self, texts):
        if not self.has_offsets:
            return super().token_offsets(texts)
        return [[m.span() for m in WORD.finditer(t)] for t in texts]

    def chunk_window(self, request, limits):
        return super().chunk_window(request, limits) - (self.overhead if self.subtracts_overhead else 0)

    def encode_pairs(self, request, limits):
        max_doc_length, max_query_length = limits
        q = self.ids(request.query)[:max_query_length]
        docs = [self.ids(d) for d in request.documents]
        keep = max_doc_length - self.overhead
        sequences = [q + [0] + d[:keep] + [-1] * self.overhead for d in docs]
        return EncodedPairs(sequences=sequences, doc_tokens=[min(len(d), keep) + self.overhead for d in docs],
                            truncated=[i for i, d in enumerate(docs) if len(d) > keep],
                            query_truncated=len(self.ids(request.query)) > max_query_length)

    def score_sequences(self, sequences, prefix_lens):
        self.scored.extend(sequences)
        out = []
        for s in sequences:
            cut = s.index(0)
            query = set(s[:cut]) - self.stop_ids
            out.append(float(len(query & set(s[cut + 1:]) - {-1})))
        return np.asarray(out, dtype=np.float64)
