"""jina-reranker-m0: multimodal pointwise reranker (Qwen2-VL-2B + score head); query and documents may be images.

As the official modeling.py (`JinaVLForRanking.compute_score`, `formatting_prompts_func`):
  - prompt: `**Document**:\\n{document}\\n**Query**:\\n{query}`, an image being
    `<|vision_start|><|image_pad|><|vision_end|>` with <|image_pad|> expanded to one token per merged patch of
    its grid (t*h*w / 4; 4 to 768 tokens, preprocessed as compute_score's processor: model/qwen2_vl.py), tokenised
    as one string (no special tokens), then the score token (id 100), where the score is read (model/jina_m0.py:
    raw_score = logit - 2.65; its one sigmoid, the engine's "sigmoid" rule, is the official score);
  - truncation: max_length 10,240; max_query_length (default 512) only sets the default document limit
    max_doc_length = max(max_length - max_query_length, max_query_length), and their sum must not pass
    max_length (the official assert: a 400 here). A text document of max_doc_length tokens or more is cut to
    max_doc_length tokens and decoded back to text (the official "TEMP FIX"); then the whole prompt is cut
    from the right to max_length - 1 tokens (the processor's truncation) before the score token. That cut
    reaches the query first (it comes last); one that would reach an image's tokens is refused (400) instead
    of feeding the model a broken image.
The forward differs from the official batches in the packing only (`JinaM0Backend.run_blocks`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from lastrank.engine.backend import Capabilities, Limits
from lastrank.engine.pairs import EncodedPairs, PairBlock, PairwiseBackend, cut_blocks, per_block
from lastrank.errors import InvalidRequestError, ModelNotAvailableError
from lastrank.families import JINA_M0 as SPEC
from lastrank.model.jina_m0 import SCORE_TOKEN_ID, Image, JinaM0ForRanking, load_jina_m0
from lastrank.model.qwen2_vl import IMAGE_PAD, IMAGE_PROMPT, ImageLimits, process_image
from lastrank.model.resolve import check_files
from lastrank.types import RerankRequest

FAMILY = SPEC.name  # Capabilities.family
MAX_LENGTH = 10240  # compute_score's max_length
MAX_QUERY_LENGTH = 512  # compute_score's max_query_length
PROMPT = "**Document**:\n{doc}\n**Query**:\n{query}"  # formatting_prompts_func (an image: its IMAGE_PROMPT)


class JinaM0Backend(PairwiseBackend):
    """A pairwise family whose pairs carry images: each sequence's payload (PairBlock.payloads) is its images in
    prompt order (the document's, then the query's), and `run_blocks` is its own (two budgets, below)."""

    def __init__(self, model: JinaM0ForRanking, tokenizer, device: torch.device, *, max_forward_patches: int = 32768,
                 **kw):
        # 32,768 patches: about 40 images of 448x448 or 10 of the largest (3,072 patches); the vision MLP's
        # widest activation is then 32,768 x 5,120 values (0.7 GB in float32)
        self.max_forward_patches = max_forward_patches
        super().__init__(model, tokenizer, device, **kw)
        v = model.vision_config
        self.image_limits = ImageLimits.of(v)
        cfg = model.config
        self.capabilities = Capabilities(
            family=FAMILY,
            architecture=f"JinaVLForRanking: Qwen2-VL vision ({v.depth} blocks, {v.embed_dim}) + Qwen2 decoder "
                         f"({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, M-RoPE), score MLP",
            listwise=False, score="sigmoid", raw_score="score head logit at the last token - 2.65",
            instruction=False, embedding_dim=None, context_length=MAX_LENGTH, images=True,
            max_doc_length=max(MAX_LENGTH - MAX_QUERY_LENGTH, MAX_QUERY_LENGTH), max_query_length=MAX_QUERY_LENGTH)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def token_offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Chunk mode, text documents: each text's own tokens (the document follows "\\n" in the prompt, where
        the pre-tokenizer starts a new piece)."""
        return [list(e.offsets) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def limits(self, request: RerankRequest) -> Limits:
        """(max_doc_length, max_query_length) as compute_score derives them."""
        max_query = request.options.max_query_length or MAX_QUERY_LENGTH
        max_doc = request.options.max_doc_length or max(MAX_LENGTH - max_query, max_query)
        if max_doc + max_query > MAX_LENGTH:
            raise InvalidRequestError(f"max_doc_length ({max_doc}) + max_query_length ({max_query}) must be at most "
                                      f"{MAX_LENGTH} for this model")
        return Limits(max_doc, max_query)

    def image(self, image) -> tuple[str, list[Image], int]:
        """-> (the image's prompt text, [its pixels and grid], its image tokens): qwen2_vl.process_image."""
        try:
            text, n, prepared = process_image(image, self.image_limits)
        except ValueError as e:  # smart_resize's aspect-ratio limit
            raise InvalidRequestError(f"image: {e}") from None
        return text, [prepared], n

    def encode_pairs(self, request: RerankRequest, limits: Limits) -> EncodedPairs:
        encode = self.tokenizer.encode
        images = request.images or {}
        query, query_images, n_query = self.image(images["query"]) if "query" in images else (request.query, [], 0)
        sequences, payloads, doc_tokens, truncated, query_truncated = [], [], [], [], False
        for i, doc in enumerate(request.documents):
            doc_images, n_images, own = [], n_query, None  # own: the document's tokens, when known uncut
            if i in images:
                doc, doc_images, n = self.image(images[i])
                n_images += n
            else:
                own = encode(doc, add_special_tokens=False).ids
                if len(own) > limits.max_doc:
                    truncated.append(i)
                if len(own) >= limits.max_doc:  # the official `>=`: cut, decoded back to text
                    doc, own = self.tokenizer.decode(own[:limits.max_doc], skip_special_tokens=False), None
            ids = encode(PROMPT.format(doc=doc, query=query), add_special_tokens=False).ids
            if ids.count(self.model.image_token_id) != n_images:  # the official processor fails on this too
                raise InvalidRequestError(f"documents[{i}] or the query holds the text {IMAGE_PAD}, which only "
                                          f"images may use")
            if len(ids) > MAX_LENGTH - 1:  # the processor's cut, from the right: the query's end first
                if ids[:MAX_LENGTH - 1].count(self.model.image_token_id) != n_images:
                    raise InvalidRequestError(f"documents[{i}]: the prompt is {len(ids)} tokens, over "
                                              f"{MAX_LENGTH - 1}, and truncating it would cut an image")
                ids, query_truncated = ids[:MAX_LENGTH - 1], True
            sequences.append(ids + [SCORE_TOKEN_ID])  # its length (what blocks and usage count) has the image tokens
            payloads.append(doc_images + query_images)
            doc_tokens.append(len(own if own is not None else encode(doc, add_special_tokens=False).ids))
        return EncodedPairs(sequences, doc_tokens, truncated, query_truncated, payloads=payloads)

    def run_blocks(self, blocks: list[PairBlock]) -> list[np.ndarray]:
        """The pairs of every block, packed into forwards of up to max_forward_tokens decoder tokens (image tokens
        included) and max_forward_patches vision-encoder rows (4 per image token: what bounds its memory), a larger
        pair alone, every image of a forward in one vision-encoder call (JinaM0ForRanking.score_prompts). The
        official code runs one (query type, document type) at a time, left-padded, in batches of 8; in float32
        this matches it to rounding (tests/families/test_jina_m0.py; benchmarks/bench_m0.py times both)."""
        sequences = [s for b in blocks for s in b.sequences]
        images = [p for b in blocks for p in b.payloads]
        sizes = [(len(s), sum(t * h * w for _, (t, h, w) in imgs)) for s, imgs in zip(sequences, images)]
        raw = np.empty(len(sequences), dtype=np.float64)
        for g in cut_blocks(sizes, (self.max_forward_tokens, self.max_forward_patches)):
            raw[g] = self.model.score_prompts([sequences[i] for i in g], [images[i] for i in g]).cpu().numpy()
        return per_block(raw, blocks)


def load(path: Path, device: torch.device, dtype: torch.dtype, *, model_id: str = "", random_weights: bool = False,
         **options) -> JinaM0Backend:
    check_files(path, ("config.json", "tokenizer.json"), "jina-reranker-m0")
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_truncation()  # truncation is the family's own (above), never the file's settings
    tokenizer.no_padding()
    if len(tokenizer.encode(IMAGE_PROMPT, add_special_tokens=False).ids) != 3:
        raise ModelNotAvailableError(f"{path}: the tokenizer has no single tokens for {IMAGE_PROMPT}; not a Qwen2-VL "
                                     f"tokenizer")
    model = load_jina_m0(path, device, dtype)
    if tokenizer.token_to_id(IMAGE_PAD) != model.image_token_id:
        raise ModelNotAvailableError(f"{path}: the tokenizer's {IMAGE_PAD} is id {tokenizer.token_to_id(IMAGE_PAD)}, "
                                     f"config.json's image_token_id is {model.image_token_id}")
    return JinaM0Backend(model, tokenizer, device, model_id=model_id, path=path, random_weights=random_weights,
                         **options)
