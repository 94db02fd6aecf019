"""Causal-LM rerankers: Qwen3-Reranker (0.6B, 4B) and mxbai-rerank-v2 (base, large).

Each (query, document) pair is one prompt; the score is read from two logits at its last position:
  - Qwen3-Reranker (Qwen3ForCausalLM): raw = logit("yes") - logit("no"); the model card's
    softmax([no, yes])[yes] is sigmoid(raw), the relevance_score. Prompt and truncation as the model card's
    code: prefix (system turn) + the body `<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}`
    tokenised as one string and cut from the right to max_length - len(prefix) - len(suffix) tokens + suffix
    (with the empty think block). The default instruction when the request has none is the card's.
    The converted form (Qwen3ForSequenceClassification, one-row `score.weight` = W[yes] - W[no]) gives raw
    directly, with the same prompt.
  - mxbai-rerank-v2 (Qwen2ForCausalLM): raw = logit("1") - logit("0"), relevance_score = sigmoid(raw) (the
    package's own `normalize=True` is sigmoid(raw - estimated_max / 2), a per-model shift; not used: one
    score rule for every family, engine/backend.py). Prompt pieces and truncation as PyPI `mxbai-rerank`
    0.1.6 `MxbaiRerankV2.prepare_inputs`: each piece tokenised alone; the query piece (`instruction: {i}\\n`
    if an instruction is given, then `query: {q}`) cut to max_length * 3 // 4; the document piece
    (`document: {d}`) cut to min(max_length, model_max_length - query - template); then the document
    (with the "\\n" before it) cut further until query + document fit max_length; then the template
    around them. max_length is first lowered so that it plus the template fits the position table.
For both, `max_doc_length` is the official `max_length` (8192): the longest pair it allows (for Qwen3 the
template's tokens included, for mxbai excluded, exactly as each official code counts). An explicit
`max_query_length` caps the query: mxbai's official query limit (default max_length * 3 // 4); Qwen3's code
has none, so there an explicit one cuts the query text by a decode round trip (as jina-v3 does) before the
body is built; by default nothing is cut but by max_length.

Detection (`detect`): config.json's architectures alone cannot tell a reranker from the chat model it was
trained from (Qwen3-Reranker-0.6B's config is a Qwen3ForCausalLM config like Qwen3-0.6B's; mxbai-rerank-v2's
a Qwen2ForCausalLM like Qwen2.5's), and serving a chat model as a reranker would give meaningless scores
without an error. So the name decides, and only together with the architecture:
  - Qwen3ForCausalLM or Qwen3ForSequenceClassification, and "qwen3-reranker" in the folder path (a hub
    cache folder is named after the repository: models--Qwen--Qwen3-Reranker-0.6B) or in config.json's
    `_name_or_path` -> Qwen3-Reranker;
  - Qwen2ForCausalLM and "mxbai-rerank" in the same -> mxbai-rerank-v2.
A local copy in a folder of another name is served once the folder is renamed (or `_name_or_path` set).

Chunk mode (engine/chunking.py) works: `token_offsets` gives a document's tokens as the prompt holds them
and `chunk_window` what is left of max_length for them after the template and the query of the request.

Fast: every pair of a request starts with the same tokens (the system turn, and for Qwen3-Reranker the
instruction and query; for mxbai the query): `encode_pairs` measures that shared prefix on the token ids
(PairBlock.prefix_len), and `score_sequences` computes every distinct prefix of the batch once (one packed
forward for all of them), then runs the pairs of all the batch's requests packed without padding, each
reading its own prefix's cached keys and values, the last layer at the last rows only (model/causal_lm.py).
Tested equal to the plain per-pair forward in float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from lastrank.engine.backend import Capabilities, Limits
from lastrank.engine.pairs import EncodedPairs, PairwiseBackend, cut_blocks
from lastrank.errors import InvalidRequestError, ModelNotAvailableError
from lastrank.families import CAUSAL_LM as SPEC
from lastrank.model.causal_lm import CausalLMForRanking, load_causal_lm
from lastrank.model.resolve import check_files
from lastrank.types import RerankRequest

QWEN3_RERANKER, MXBAI_RERANK_V2 = "qwen3-reranker", "mxbai-rerank-v2"
MAX_LENGTH = 8192  # both official codes' default max_length

# Qwen3-Reranker's model card
QWEN3_PREFIX = ('<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the '
                'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n')
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_BODY = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
QWEN3_DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_POSITIVE, QWEN3_NEGATIVE = "yes", "no"  # vocabulary tokens (convert_tokens_to_ids)

# mxbai-rerank 0.1.6, mxbai_rerank_v2.py
MXBAI_PREFIX = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\n")
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
MXBAI_SEP = "\n"
MXBAI_TASK = ("You are a search relevance expert who evaluates how well documents match search queries. For each "
              "query-document pair, carefully analyze the semantic relationship between them, then provide your "
              "binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:")
MXBAI_POSITIVE, MXBAI_NEGATIVE = "1", "0"  # encoded text, first id


def _name(config: dict, folder: Path) -> str:
    return f"{folder} {config.get('_name_or_path') or ''}".lower()


def reranker_kind(config: dict, folder: Path) -> str | None:
    """QWEN3_RERANKER, MXBAI_RERANK_V2 or None (the rule in the module docstring)."""
    archs = config.get("architectures") or []
    name = _name(config, folder)
    if {"Qwen3ForCausalLM", "Qwen3ForSequenceClassification"} & set(archs) and "qwen3-reranker" in name:
        return QWEN3_RERANKER
    if "Qwen2ForCausalLM" in archs and "mxbai-rerank" in name:
        return MXBAI_RERANK_V2
    return None


def detect(config: dict, folder: Path) -> bool:
    return reranker_kind(config, folder) is not None


def shared_prefix_len(sequences: list[list[int]]) -> int:
    """Leading tokens every sequence has in common, leaving each at least one token of its own (0 for one
    sequence: nothing to share)."""
    if len(sequences) < 2:
        return 0
    first = sequences[0]
    n = min(len(s) for s in sequences) - 1
    for s in sequences[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


class CausalLMBackend(PairwiseBackend):
    """Base of the two families: loading, limits, the packed shared-prefix scoring. Subclasses build pairs.

    max_forward_tokens (PairwiseBackend's): counted after the shared prefix, which is computed apart.
    reuse_prefix: compute each request's shared prefix once (True) or run every pair whole (False; the
    benchmark's comparison).
    """

    family: str
    raw_description: str

    def __init__(self, model: CausalLMForRanking, tokenizer, device: torch.device, *, reuse_prefix: bool = True, **kw):
        self.reuse_prefix = reuse_prefix
        super().__init__(model, tokenizer, device, **kw)
        cfg = model.config
        self.context_length = cfg.max_position_embeddings
        head = "score head (Qwen3ForSequenceClassification)" if model.head.shape[0] == 1 else "two LM-head rows"
        self.capabilities = Capabilities(
            family=self.family,
            architecture=f"{'Qwen3' if cfg.model_type == 'qwen3' else 'Qwen2'} decoder, {cfg.num_hidden_layers} "
                         f"layers, hidden {cfg.hidden_size}, {head}",
            listwise=False, score="sigmoid", raw_score=self.raw_description, instruction=True, embedding_dim=None,
            context_length=self.context_length, max_doc_length=MAX_LENGTH,
            max_query_length=self.default_query_limit(MAX_LENGTH),
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.model.head.dtype

    @staticmethod
    def default_query_limit(max_length: int) -> int:
        return max_length

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def limits(self, request: RerankRequest) -> Limits:
        """(max_length, query limit) for this request: the official defaults unless the request sets them,
        max_length capped at the position table."""
        options = request.options
        max_length = min(options.max_doc_length or MAX_LENGTH, self.context_length)
        query = options.max_query_length if options.max_query_length is not None else self.default_query_limit(max_length)
        return Limits(max_length, query)

    def token_offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Chunk mode (engine/chunking.py): a document's own tokens as the prompt holds them. Both templates put
        the document right after ": " (`<Document>: `, `document: `), where the pre-tokenizer starts a new piece
        (the piece before ends at the colon), so they are the tokens of " " + document; spans in the document
        itself (the space's share dropped: a token that is only that space has the empty span (0, 0))."""
        return [[(max(0, a - 1), max(0, b - 1)) for a, b in e.offsets]
                for e in self.tokenizer.encode_batch([" " + t for t in texts], add_special_tokens=False)]

    def score_sequences(self, sequences: list[list[int]], prefix_lens: list[int]) -> np.ndarray:
        """All pairs of the batch (one or many requests) through model.score_last: each distinct shared prefix
        computed once, the pairs packed into forwards of up to max_forward_tokens."""
        if not sequences:
            return np.empty(0, dtype=np.float64)
        lens = [min(p, len(s) - 1) if self.reuse_prefix else 0 for s, p in zip(sequences, prefix_lens)]
        users: dict[tuple[int, ...], int] = {}
        for s, p in zip(sequences, lens):
            users[tuple(s[:p])] = users.get(tuple(s[:p]), 0) + 1
        lens = [p if users[tuple(s[:p])] > 1 else 0 for s, p in zip(sequences, lens)]  # alone: nothing to share
        # forwards of up to max_forward_tokens of the sequences' own tokens (a shared prefix is computed apart)
        groups = cut_blocks([len(s) - p for s, p in zip(sequences, lens)], self.max_forward_tokens)
        raw = self.model.score_last(sequences, lens, groups=groups)
        return raw.cpu().numpy().astype(np.float64)


class Qwen3RerankerBackend(CausalLMBackend):
    family = QWEN3_RERANKER
    raw_description = 'logit("yes") - logit("no") at the last position'

    def __init__(self, model, tokenizer, device, **kw):
        super().__init__(model, tokenizer, device, **kw)
        self.prefix, self.suffix = self.encode(QWEN3_PREFIX), self.encode(QWEN3_SUFFIX)

    def query_part(self, request: RerankRequest, limits: Limits) -> tuple[int, str, str, list[int], bool]:
        """-> (body budget, instruction, query, the body's tokens before the document's own, query cut)."""
        max_length, query_limit = limits
        budget = max_length - len(self.prefix) - len(self.suffix)
        if budget < 1:
            raise InvalidRequestError(f"max_doc_length must be more than {len(self.prefix) + len(self.suffix)} for "
                                      f"this model (its prompt template's tokens), got {max_length}")
        instruction = request.options.instruction
        instruction = QWEN3_DEFAULT_INSTRUCTION if instruction is None else instruction
        query, query_truncated = request.query, False
        if request.options.max_query_length is not None:  # not in the official code: only when asked (module docstring)
            q = self.encode(query)
            if len(q) > query_limit:
                query, query_truncated = self.tokenizer.decode(q[:query_limit], skip_special_tokens=False), True
        # The tokens before the document's own: the body with an empty document, without its last space.
        head = self.encode(QWEN3_BODY.format(instruction=instruction, query=query, doc="")[:-1])
        return budget, instruction, query, head, query_truncated

    def chunk_window(self, request: RerankRequest, limits: Limits) -> int:
        budget, _, _, head, _ = self.query_part(request, limits)
        return max(1, budget - len(head))

    def encode_pairs(self, request: RerankRequest, limits: Limits) -> EncodedPairs:
        budget, instruction, query, head, query_truncated = self.query_part(request, limits)
        bodies = [QWEN3_BODY.format(instruction=instruction, query=query, doc=d) for d in request.documents]
        sequences, doc_tokens, truncated = [], [], []
        for i, e in enumerate(self.tokenizer.encode_batch(bodies, add_special_tokens=False)):
            body = e.ids
            if len(body) > budget:
                truncated.append(i)
                query_truncated |= budget < len(head)
                body = body[:budget]
            sequences.append(self.prefix + body + self.suffix)
            doc_tokens.append(max(0, len(body) - len(head)))  # the document's tokens (with the space before it)
        return EncodedPairs(sequences, doc_tokens, truncated, query_truncated, shared_prefix_len(sequences))


class MxbaiRerankV2Backend(CausalLMBackend):
    family = MXBAI_RERANK_V2
    raw_description = 'logit("1") - logit("0") at the last position'

    def __init__(self, model, tokenizer, device, **kw):
        super().__init__(model, tokenizer, device, **kw)
        self.prefix, self.suffix = self.encode(MXBAI_PREFIX), self.encode(MXBAI_SUFFIX)
        self.sep, self.task = self.encode(MXBAI_SEP), self.encode(MXBAI_TASK)
        self.template_len = len(self.prefix) + len(self.task) + len(self.suffix) + len(self.sep)

    @staticmethod
    def default_query_limit(max_length: int) -> int:
        return max_length * 3 // 4

    def limits(self, request: RerankRequest) -> Limits:
        # The package lowers max_length so that it plus the template fits the position table, and derives
        # the query limit from the lowered value.
        options = request.options
        max_length = min(options.max_doc_length or MAX_LENGTH, self.context_length - self.template_len)
        if max_length <= len(self.sep):
            raise InvalidRequestError(f"max_doc_length must be more than {len(self.sep)} for this model, got {max_length}")
        query = options.max_query_length if options.max_query_length is not None else self.default_query_limit(max_length)
        # lastrank's only addition: an explicit query limit leaves the document room for its separator, so
        # the package's only_second truncation can always make the pair fit (it logs an error otherwise).
        return Limits(max_length, min(query, max_length - len(self.sep)))

    def query_part(self, request: RerankRequest, limits: Limits) -> tuple[int, list[int], int, bool]:
        """-> (max_length, the query piece's tokens, the document piece's limit, query cut)."""
        max_length, query_limit = limits
        query_text = f"query: {request.query}"
        if request.options.instruction:  # the package: `if instruction` (an empty instruction adds nothing)
            query_text = f"instruction: {request.options.instruction}{MXBAI_SEP}{query_text}"
        query_full = self.encode(query_text)
        query = query_full[:query_limit]
        doc_limit = max(0, min(self.context_length - len(query) - self.template_len, max_length))
        return max_length, query, doc_limit, len(query) < len(query_full)

    def chunk_window(self, request: RerankRequest, limits: Limits) -> int:
        max_length, query, doc_limit, _ = self.query_part(request, limits)
        label = len(self.encode("document:"))  # the document piece is "document: {d}"
        return max(1, min(doc_limit, max_length - len(query) - len(self.sep)) - label)

    def encode_pairs(self, request: RerankRequest, limits: Limits) -> EncodedPairs:
        max_length, query, doc_limit, query_truncated = self.query_part(request, limits)
        docs = self.tokenizer.encode_batch([f"document: {d}" for d in request.documents], add_special_tokens=False)
        sequences, doc_tokens, truncated = [], [], []
        for i, e in enumerate(docs):
            second = self.sep + e.ids[:doc_limit]
            over = len(query) + len(second) - max_length
            if over > 0:  # prepare_for_model(..., truncation="only_second", max_length)
                second = second[:-over]
            kept = len(second) - len(self.sep)
            if kept < len(e.ids):
                truncated.append(i)
            doc_tokens.append(kept)  # with the "document: " label, as the package counts them
            sequences.append(self.prefix + query + second + self.sep + self.task + self.suffix)
        return EncodedPairs(sequences, doc_tokens, truncated, query_truncated, shared_prefix_len(sequences))


def score_token_ids(kind: str, tokenizer) -> tuple[int, int]:
    """(positive, negative) token ids whose logits make the score, looked up as each official code does:
    Qwen3-Reranker's convert_tokens_to_ids("yes"/"no"), mxbai's first id of the encoded "1"/"0"."""
    if kind == QWEN3_RERANKER:
        ids = tuple(tokenizer.token_to_id(t) for t in (QWEN3_POSITIVE, QWEN3_NEGATIVE))
        if None in ids:
            raise ModelNotAvailableError("the tokenizer has no 'yes'/'no' tokens; not a Qwen tokenizer")
        return ids
    return tuple(tokenizer.encode(t, add_special_tokens=False).ids[0] for t in (MXBAI_POSITIVE, MXBAI_NEGATIVE))


BACKENDS = {QWEN3_RERANKER: Qwen3RerankerBackend, MXBAI_RERANK_V2: MxbaiRerankV2Backend}


def load(path: Path, device: torch.device, dtype: torch.dtype, *, model_id: str = "", random_weights: bool = False,
         compile: bool | None = None, **options) -> CausalLMBackend:
    check_files(path, ("config.json", "tokenizer.json"), "Qwen3-Reranker / mxbai-rerank-v2")
    config = json.loads((path / "config.json").read_text())
    kind = reranker_kind(config, path)
    if kind is None:
        raise ModelNotAvailableError(f"{path} is not a causal-LM reranker lastrank knows: {SPEC.supports}")
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_truncation()  # truncation is the family's own (above), never the file's settings
    tokenizer.no_padding()
    model = load_causal_lm(path, device, dtype, score_token_ids(kind, tokenizer), compile=compile)
    return BACKENDS[kind](model, tokenizer, device, model_id=model_id, path=path, random_weights=random_weights, **options)
