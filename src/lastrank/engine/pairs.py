"""What every pointwise family shares: each (query, document) pair is one model input scored on its own.

Cross-encoders (XLM-R) and causal-LM rerankers (Qwen3-Reranker, mxbai-rerank-v2) differ only in how a pair
becomes token ids (`encode_pairs`: the official template and truncation) and in the model that turns ids
into one raw score (`score_sequences`). Blocking is here, once; planning, billing and the truncate=False
refusal are the engine's plan template (engine/backend.py, around `encode_request`), as the score rule
("sigmoid": relevance_score = sigmoid(raw)) is.

A block is a run of consecutive documents of one request whose sequences add up to at most
`max_block_tokens`; the scheduler batches blocks of several requests, and `run_blocks` hands every sequence
of the batch to `score_sequences` in one call, so a family can pack them into one variable-length forward.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lastrank.engine.backend import Backend, Block, EncodedRequest, Limits, RerankPlan, Scores, sigmoid
from lastrank.types import RerankRequest


@dataclass
class PairBlock(Block):
    sequences: list[list[int]]  # one model input per document of doc_indices
    # Leading tokens every sequence of this block shares (the template's system turn, instruction and query
    # for causal LMs). A family may compute them once; 0: nothing shared / not used.
    prefix_len: int = 0
    # Per sequence, what the model reads beside its ids (jina-m0: the pair's images); None: the ids only.
    payloads: list[Any] | None = None

    @property
    def n_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


@dataclass
class EncodedPairs:
    sequences: list[list[int]]  # per document: the whole model input
    doc_tokens: list[int]  # per document: its own tokens after truncation
    truncated: list[int]  # indices of documents that were cut
    query_truncated: bool = False
    prefix_len: int = 0  # leading tokens shared by every sequence (see PairBlock.prefix_len)
    payloads: list[Any] | None = None  # per document: what its sequence carries beside ids (PairBlock.payloads)


def cut_blocks(sizes: list[int] | list[tuple[int, ...]], limits: int | tuple[int, ...]) -> list[list[int]]:
    """Consecutive indices grouped so each group's sizes sum to at most the limit (a larger item alone). Sizes
    may be tuples of several measures (e.g. tokens and image patches), each summed against its own limit.

    The one pack-to-budget rule of the engine: a request's blocks (every family's plan) and the packed
    forwards of a batch (cross-encoder, bi-encoder, causal LM, jina-m0, jina-v3's block packing) use it."""
    as_tuple = (lambda v: v) if isinstance(limits, tuple) else (lambda v: (v,))
    limits = as_tuple(limits)
    groups: list[list[int]] = []
    total = (0,) * len(limits)
    for i, size in enumerate(map(as_tuple, sizes)):
        grown = tuple(t + n for t, n in zip(total, size))
        if groups and all(g <= m for g, m in zip(grown, limits)):
            groups[-1].append(i)
            total = grown
        else:
            groups.append([i])
            total = size
    return groups


class PairwiseBackend(Backend):
    """Base of the pointwise families. Subclasses set `capabilities` and implement the two methods below."""

    max_block_tokens: int = 8192

    def __init__(self, model, tokenizer, device, *, max_forward_tokens: int = 16384, model_id: str = "",
                 path: Path | None = None, random_weights: bool = False):
        """What every pointwise family holds: its model, its tokenizer, the device, and max_forward_tokens, the
        most tokens one packed forward holds (it bounds activation memory: a batch with more runs several)."""
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_forward_tokens = max_forward_tokens
        super().__init__(model_id=model_id, path=path, random_weights=random_weights)

    @abstractmethod
    def encode_pairs(self, request: RerankRequest, limits: Limits) -> EncodedPairs:
        """The official template and truncation under `limits` (self.limits(request)), for every document."""

    def score_sequences(self, sequences: list[list[int]], prefix_lens: list[int]) -> np.ndarray:
        """Raw scores (logits), one per sequence, float. `prefix_lens[i]`: leading tokens sequence i shares
        with the others of its block (PairBlock.prefix_len), for families that compute them once. Every
        family implements it, unless it runs its blocks itself (jina-m0: its pairs carry images)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither score_sequences nor run_blocks")

    def encode_request(self, request: RerankRequest, limits: Limits) -> EncodedRequest:
        enc = self.encode_pairs(request, limits)
        groups = cut_blocks([len(s) for s in enc.sequences], self.max_block_tokens)
        blocks = [PairBlock(request.request_id, b, g, [enc.sequences[i] for i in g], enc.prefix_len,
                            None if enc.payloads is None else [enc.payloads[i] for i in g])
                  for b, g in enumerate(groups)]
        return EncodedRequest(blocks, enc.doc_tokens, enc.truncated, enc.query_truncated)

    def run_blocks(self, blocks: list[PairBlock]) -> list[np.ndarray]:
        """One raw-score array per block, in the order of `blocks`; every sequence goes to the model at once."""
        sequences = [s for b in blocks for s in b.sequences]
        prefix_lens = [b.prefix_len for b in blocks for _ in b.sequences]
        raw = np.asarray(self.score_sequences(sequences, prefix_lens))
        if raw.shape != (len(sequences),):
            raise RuntimeError(f"score_sequences returned shape {raw.shape} for {len(sequences)} sequences. This is a bug.")
        return per_block(raw, blocks)

    def scores(self, plan: RerankPlan, outputs: list[np.ndarray]) -> Scores:
        return sigmoid_scores(plan, outputs)


def per_block(raw: np.ndarray, blocks: list[PairBlock]) -> list[np.ndarray]:
    """Raw scores of every sequence of a batch, in block order, split back into one array per block."""
    out, start = [], 0
    for b in blocks:
        out.append(raw[start:start + len(b.sequences)])
        start += len(b.sequences)
    return out


def sigmoid_scores(plan: RerankPlan, outputs: list[np.ndarray]) -> Scores:
    """Each block's raw scores put back in document order; relevance = the one sigmoid of the score rule."""
    raw = np.empty(len(plan.request.documents), dtype=np.float64)
    for block, out in zip(plan.blocks, outputs):
        raw[block.doc_indices] = out
    return Scores(relevance=sigmoid(raw), raw=raw)
