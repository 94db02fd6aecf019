"""Jina Reranker V3 (jinaai/jina-reranker-v3): the listwise family. plan -> run blocks -> merge -> order.

The official rerank() algorithm: truncation by decode round-trip, 125-document / token-budget blocks
(families/jina_v3/plan.py), the exact prompt bytes (families/jina_v3/prompt.py), one forward per block reading the hidden state
at a marker after each document and after the query (model/jina.py on model/decoder.py), and the block-weighted query
merge in float32 numpy (`scores`). relevance_score is the cosine exactly as the official code returns it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lastrank.engine.backend import Backend, Block, Capabilities, EncodedRequest, Limits, RerankPlan, Scores
from lastrank.engine.pairs import cut_blocks
from lastrank.families import JINA_V3 as SPEC
from lastrank.families.jina_v3.plan import split_blocks, truncate_texts
from lastrank.families.jina_v3.prompt import PREFIX, build_prompt
from lastrank.errors import ModelError
from lastrank.model.attention import PrefixCache
from lastrank.model.jina import JinaForRanking, load_jina_v3
from lastrank.model.resolve import check_files
from lastrank.model.tokenizer import JinaV3Tokenizer
from lastrank.types import RerankRequest

FAMILY = SPEC.name  # Capabilities.family
# The official rerank() defaults.
MAX_DOC_LENGTH = 2048
MAX_QUERY_LENGTH = 512


@dataclass
class JinaBlock(Block):
    input_ids: list[int]  # the whole official block prompt

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


@dataclass
class JinaBlockOutput:
    query_embedding: np.ndarray  # float32 [1, 512]
    doc_embeddings: np.ndarray  # float32 [n, 512]
    weight: np.float32  # max over the block of (1 + cos) / 2, cos computed in the model dtype


class JinaV3Backend(Backend):
    """pack_blocks: run the blocks of one run_blocks call in shared packed forwards (True), one forward per
    block (False), or decide by device (None: pack on CUDA, one by one on CPU, where packing 4 blocks of
    ~600 tokens measured 0.93x of one-by-one; docs/benchmarks.md; the GPU side is not measured). Packed or
    not, every block's outputs are the same (to 1e-5 in float32; tests/families/test_jina_v3_packing.py).
    max_pack_tokens caps the tokens of one packed forward (a block larger than the cap runs alone).
    packed_attention: "segments" or "mask" (attention.Packing).
    reuse_prefix: keep the keys and values of the fixed system turn every prompt starts with from the first
    forward, and run only the tokens after it in every later one (attention.PrefixCache; same scores to 1e-5
    in float32, tests/families/test_jina_v3_prefix.py). Kept from a real request rather than computed at start-up, so
    the cold start to the first result pays nothing for it.
    """

    def __init__(self, model: JinaForRanking, tokenizer: JinaV3Tokenizer, device: torch.device,
                 pack_blocks: bool | None = None, max_pack_tokens: int = 32768, packed_attention: str = "segments",
                 reuse_prefix: bool = True, *, model_id: str = "", path: Path | None = None,
                 random_weights: bool = False):
        self.model = model
        super().__init__(model_id=model_id, path=path, random_weights=random_weights)
        self.capabilities = Capabilities(
            family=FAMILY, architecture="JinaForRanking (Qwen3 decoder + MLP projector)", listwise=True,
            score="cosine", raw_score="cosine (the same value)", instruction=True,
            embedding_dim=model.projector[2].out_features, context_length=tokenizer.model_max_length,
            max_doc_length=MAX_DOC_LENGTH, max_query_length=MAX_QUERY_LENGTH,
        )
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

    @classmethod
    def load(cls, path: Path, device: torch.device, dtype: torch.dtype, *, model_id: str = "",
             random_weights: bool = False, compile: bool | None = None, pack_blocks: bool | None = None,
             **options) -> "JinaV3Backend":
        check_files(path, ("config.json", "model.safetensors", "tokenizer.json"), "jina-reranker-v3")
        tokenizer = JinaV3Tokenizer.from_dir(path)
        model = load_jina_v3(path, device, dtype, compile=compile)
        return cls(model, tokenizer, device, pack_blocks=pack_blocks, model_id=model_id, path=path,
                   random_weights=random_weights, **options)

    def encode_request(self, request: RerankRequest, limits: Limits) -> EncodedRequest:
        tok = self.tokenizer
        q = truncate_texts(tok, [request.query], limits.max_query)
        d = truncate_texts(tok, list(request.documents), limits.max_doc)
        cut = [i for i, fired in enumerate(d.truncated) if fired]
        groups = split_blocks(d.lengths, q.lengths[0], tok.model_max_length, limits.max_doc)
        prompts = [build_prompt(q.texts[0], [d.texts[i] for i in g], request.options.instruction) for g in groups]
        blocks = [
            JinaBlock(request.request_id, b, g, ids)
            for b, (g, ids) in enumerate(zip(groups, tok.encode_batch(prompts)))
        ]
        return EncodedRequest(blocks, d.lengths, cut, q.truncated[0])

    def token_offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """The tokens truncate_texts counts (the Qwen3 tokenizer on the text alone; it adds no special
        tokens), with their character spans from the `tokenizers` encodings."""
        return [list(e.offsets) for e in self.tokenizer.tokenizer.encode_batch(texts, add_special_tokens=True)]

    def run_blocks(self, blocks: list[JinaBlock]) -> list[JinaBlockOutput]:
        """Outputs in the order of `blocks`. Blocks may come from different requests: with packing on,
        consecutive blocks share one forward (up to max_pack_tokens), each exactly as if it ran alone."""
        pack = self.pack_blocks if self.pack_blocks is not None else self.device.type == "cuda"
        if not pack:
            return [out for b in blocks for out in self._run_group([b])]
        groups = cut_blocks([b.n_tokens for b in blocks], self.max_pack_tokens)
        return [out for group in groups for out in self._run_group([blocks[i] for i in group])]

    def _run_group(self, group: list[JinaBlock]) -> list[JinaBlockOutput]:
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
            outputs.append(JinaBlockOutput(
                query_embedding=q.float().cpu().numpy()[None, :],
                doc_embeddings=d.float().cpu().numpy(),
                weight=((1.0 + s) / 2.0).max(),
            ))
        return outputs

    def scores(self, plan: RerankPlan, outputs: list[JinaBlockOutput]) -> Scores:
        # Official merge, in float32 numpy: weighted mean of the block query vectors, then the cosine of it
        # with every document vector. The per-block cosines are only weights.
        q = np.average(np.array([o.query_embedding for o in outputs]), axis=0, weights=[o.weight for o in outputs])
        D = np.concatenate([o.doc_embeddings for o in outputs], axis=0)
        # D's rows are the documents in input order: plan.split_blocks cuts them into consecutive blocks.
        cos = (np.dot(q, D.T) / (np.linalg.norm(q) * np.linalg.norm(D, axis=1)))[0]
        return Scores(relevance=cos, raw=cos, embeddings=D)


def load(path: Path, device: torch.device, dtype: torch.dtype, **kw) -> JinaV3Backend:
    return JinaV3Backend.load(path, device, dtype, **kw)
