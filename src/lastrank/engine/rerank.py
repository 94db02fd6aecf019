"""The rerank algorithm's only home: plan -> run blocks -> merge -> order (model-spec §6).

Server, Python API, CLI and eval all go through RerankEngine, so they cannot drift apart.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np
import torch

from lastrank.engine.plan import split_blocks, truncate_texts
from lastrank.engine.prompt import PREFIX, build_prompt
from lastrank.errors import InvalidRequestError, ModelError
from lastrank.model.modeling import JinaForRanking, PrefixCache
from lastrank.model.tokenizer import RerankTokenizer
from lastrank.types import RankedDocument, RerankRequest, RerankResult, Usage


@dataclass
class Block:
    request_id: str
    index: int  # block number within its request
    input_ids: list[int]
    doc_indices: list[int]  # positions in request.documents

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


@dataclass
class BlockOutput:
    query_embedding: np.ndarray  # float32 [1, 512]
    doc_embeddings: np.ndarray  # float32 [n, 512]
    weight: np.float32  # max over the block of (1 + cos) / 2, cos computed in the model dtype


@dataclass
class RerankPlan:
    request: RerankRequest
    blocks: list[Block]
    usage: Usage = field(default_factory=Usage)


def _check_int(name: str, value, minimum: int) -> int:
    # numbers.Integral so numpy integers work too; bool is an int subclass but never a count
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidRequestError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise InvalidRequestError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def validate(request: RerankRequest) -> None:
    if not isinstance(request.query, str):
        raise InvalidRequestError(f"query must be a string, got {type(request.query).__name__}")
    if not isinstance(request.documents, (list, tuple)):
        raise InvalidRequestError(f"documents must be a list of strings, got {type(request.documents).__name__}")
    for i, doc in enumerate(request.documents):
        if not isinstance(doc, str):
            raise InvalidRequestError(f"documents[{i}] must be a string, got {type(doc).__name__}")
    if request.top_n is not None:
        request.top_n = _check_int("top_n", request.top_n, 0)
    request.max_doc_length = _check_int("max_doc_length", request.max_doc_length, 1)
    request.max_query_length = _check_int("max_query_length", request.max_query_length, 1)
    if request.instruction is not None and not isinstance(request.instruction, str):
        raise InvalidRequestError(f"instruction must be a string or None, got {type(request.instruction).__name__}")


class RerankEngine:
    """pack_blocks: run the blocks of one run_blocks call in shared packed forwards (True), one forward per
    block (False), or decide by device (None: pack on CUDA, one by one on CPU, where packing 4 blocks of
    ~600 tokens measured 0.93x of one-by-one; docs/benchmarks.md; the GPU side is not measured). Packed or
    not, every block's outputs are the same (to 1e-5 in float32; tests/engine/test_packing.py).
    max_pack_tokens caps the tokens of one packed forward (a block larger than the cap runs alone).
    packed_attention: "segments" or "mask" (modeling.Packing).
    reuse_prefix: keep the keys and values of the fixed system turn every prompt starts with from the first
    forward, and run only the tokens after it in every later one (modeling.PrefixCache; same scores to 1e-5
    in float32, tests/engine/test_prefix.py). Kept from a real request rather than computed at start-up, so
    the cold start to the first result pays nothing for it.
    """

    def __init__(self, model: JinaForRanking, tokenizer: RerankTokenizer, device: torch.device,
                 pack_blocks: bool | None = None, max_pack_tokens: int = 32768, packed_attention: str = "segments",
                 reuse_prefix: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.pack_blocks = pack_blocks
        self.max_pack_tokens = max_pack_tokens
        self.packed_attention = packed_attention
        self.reuse_prefix = reuse_prefix
        self.prefix: PrefixCache | None = None  # filled by the first forward that starts with the system turn
        self._prefix_ids = torch.tensor(tokenizer.encode(PREFIX), dtype=torch.long, device=device)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.model.embed_tokens.weight.dtype

    def plan(self, request: RerankRequest) -> RerankPlan:
        validate(request)
        docs = list(request.documents)
        if not docs:
            return RerankPlan(request, [], Usage())
        tok = self.tokenizer
        q = truncate_texts(tok, [request.query], request.max_query_length)
        d = truncate_texts(tok, docs, request.max_doc_length)
        groups = split_blocks(d.lengths, q.lengths[0], tok.model_max_length, request.max_doc_length)
        prompts = [build_prompt(q.texts[0], [d.texts[i] for i in g], request.instruction) for g in groups]
        blocks = [
            Block(request.request_id, b, ids, g)
            for b, (g, ids) in enumerate(zip(groups, tok.encode_batch(prompts)))
        ]
        usage = Usage(
            documents=len(docs),
            prompt_tokens=sum(b.n_tokens for b in blocks),
            blocks=len(blocks),
            truncated_documents=sum(d.truncated),
            query_truncated=q.truncated[0],
            doc_tokens=d.lengths,
        )
        return RerankPlan(request, blocks, usage)

    def run_blocks(self, blocks: list[Block]) -> list[BlockOutput]:
        """Outputs in the order of `blocks`. Blocks may come from different requests: with packing on,
        consecutive blocks share one forward (up to max_pack_tokens), each exactly as if it ran alone."""
        pack = self.pack_blocks if self.pack_blocks is not None else self.device.type == "cuda"
        groups: list[list[Block]] = []
        for b in blocks:
            if pack and groups and sum(x.n_tokens for x in groups[-1]) + b.n_tokens <= self.max_pack_tokens:
                groups[-1].append(b)
            else:
                groups.append([b])
        return [out for group in groups for out in self._run_group(group)]

    def _run_block(self, block: Block) -> BlockOutput:
        return self._run_group([block])[0]

    def _run_group(self, group: list[Block]) -> list[BlockOutput]:
        ids = [torch.tensor(b.input_ids, dtype=torch.long, device=self.device) for b in group]
        prefix = self.prefix if self.reuse_prefix else None
        pending = None
        if self.reuse_prefix and prefix is None:
            pending = PrefixCache(self._prefix_ids)
            if not pending.starts(ids[0]):
                pending = None
        embedded = self.model.embed_blocks(ids, self.tokenizer.doc_marker_id, self.tokenizer.query_marker_id,
                                           attention=self.packed_attention, prefix=prefix,
                                           on_kv=pending.keep if pending else None)
        if pending is not None:
            self.prefix = pending
        outputs = []
        for block, (q, d, scores) in zip(group, embedded):
            if d.shape[0] != len(block.doc_indices):
                raise ModelError(f"block has {len(block.doc_indices)} documents but {d.shape[0]} markers. This is a bug.")
            s = scores.float().cpu().numpy()
            outputs.append(BlockOutput(
                query_embedding=q.float().cpu().numpy()[None, :],
                doc_embeddings=d.float().cpu().numpy(),
                weight=((1.0 + s) / 2.0).max(),
            ))
        return outputs

    def finish(self, plan: RerankPlan, outputs: list[BlockOutput]) -> RerankResult:
        request = plan.request
        if not plan.blocks:
            return RerankResult([], plan.usage, request.request_id)
        # Official merge, in float32 numpy: weighted mean of the block query vectors, then the cosine of it
        # with every document vector. The per-block cosines are only weights.
        q = np.average(np.array([o.query_embedding for o in outputs]), axis=0, weights=[o.weight for o in outputs])
        D = np.concatenate([o.doc_embeddings for o in outputs], axis=0)
        scores = np.dot(q, D.T) / (np.linalg.norm(q) * np.linalg.norm(D, axis=1))
        order = np.argsort(scores[0])[::-1]
        top_n = len(order) if request.top_n is None else min(request.top_n, len(order))
        doc_rows = [i for b in plan.blocks for i in b.doc_indices]  # D's row -> input index
        results = [
            RankedDocument(
                index=doc_rows[r],
                relevance_score=float(scores[0, r]),
                document=request.documents[doc_rows[r]],
                embedding=D[r].tolist() if request.return_embeddings else None,
            )
            for r in order[:top_n]
        ]
        return RerankResult(results, plan.usage, request.request_id)

    def rerank(self, request: RerankRequest) -> RerankResult:
        plan = self.plan(request)
        return self.finish(plan, self.run_blocks(plan.blocks))

    def warmup(self) -> None:
        self.rerank(RerankRequest(query="warm up", documents=["a short passage", "another passage"]))
