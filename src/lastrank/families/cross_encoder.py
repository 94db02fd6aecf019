"""XLM-RoBERTa cross-encoders: BAAI/bge-reranker-v2-m3 and jinaai/jina-reranker-v2-base-multilingual.

The query and one document are read together, `<s> query </s></s> document </s>` (the checkpoint's own
tokenizer.json and its post-processor template), and the classification head gives one logit:
raw_score = the logit, relevance_score = sigmoid(logit) (the "sigmoid" rule of engine/backend.py; FlagReranker's
`normalize=True` and Jina's `compute_score` both apply exactly this sigmoid to the same logit).

Lengths and truncation follow each model's official code. For both, `max_doc_length` is the official
`max_length`: the longest model input, special tokens included, that a (query, document) pair may become.
  - bge-reranker-v2-m3 (FlagEmbedding >= 1.3's FlagReranker.compute_score, encoder_only/base.py): max_length 512,
    query_max_length = max_length * 3 // 4 (384) unless given. The query is tokenised without special
    tokens and cut to query_max_length, the document likewise to max_length, then the pair is built with
    `prepare_for_model(q, d, truncation="only_second", max_length)`: only the document is cut further, from
    the right, until the pair fits. Where even an empty document cannot make it fit (only with a
    max_query_length >= max_length - 4) transformers 4 logs an error and sends the pair over max_length,
    transformers 5 empties the document and still sends it over; lastrank empties the document and cuts the
    query to max_length - 4, so max_length is never exceeded. (FlagEmbedding 1.2's FlagReranker tokenised the
    pairs in one call with longest_first instead, like jina below; the two give the same ids whenever the
    query has at most (max_length - 4) / 2 tokens, 254 at 512: for every ordinary query.)
  - jina-reranker-v2 (its remote code's `compute_score`): max_length = the tokenizer's model_max_length (1024),
    `tokenizer(pairs, truncation=True, max_length)`, i.e. the fast tokenizer's "longest_first": tokens come off
    the longer of query and document until the pair fits (both to about half when both are long). There is no
    separate query limit; an explicit max_query_length cuts the query before that (the default, 1024, never
    cuts anything longest_first would not: a query cut to >= max_length - 4 tokens ends up the same).
    Jina's `rerank()` method (sliding windows over long documents, max of the window scores) is not
    reproduced: lastrank scores the truncated pair as `compute_score` does.
Both limits are capped at what the model's position table holds (8192 / 1024 tokens).

Every `score_sequences` call (the pairs of one or many requests) is one packed forward per up to
`max_forward_tokens` tokens: no padding, attention confined to each pair (model/xlmr.py).

Chunk mode (engine/chunking.py) works: `token_offsets` and `chunk_window` below.
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
from lastrank.families import CROSS_ENCODER as SPEC
from lastrank.model.int8 import check_int8, is_int8, quantize_linears
from lastrank.model.resolve import check_files
from lastrank.model.xlmr import XLMRobertaForSequenceClassification, load_xlmr
from lastrank.types import RerankRequest

FAMILY = SPEC.name  # Capabilities.family
ARCHITECTURE = "XLMRobertaForSequenceClassification"

# The official default max_length of each truncation rule: FlagReranker's argument default; compute_score's is
# the tokenizer's model_max_length (tokenizer_config.json, 1024 in jina-reranker-v2), read at load.
FLAG_RERANKER, COMPUTE_SCORE = "flag-reranker", "jina-compute-score"
DEFAULT_MAX_LENGTH = {FLAG_RERANKER: 512, COMPUTE_SCORE: 1024}


def is_jina_flash(config: dict) -> bool:
    """jina-reranker-v2's config.json maps AutoConfig to its remote XLMRobertaFlashConfig."""
    auto = config.get("auto_map")
    return isinstance(auto, dict) and str(auto.get("AutoConfig", "")).endswith("XLMRobertaFlashConfig")


def flag_reranker_lengths(n_query: int, n_doc: int, max_length: int, query_max_length: int,
                          n_special: int) -> tuple[int, int]:
    """Token counts FlagReranker keeps (module docstring): the query cut to query_max_length, the document to
    max_length, then only the document, until the pair fits."""
    q = min(n_query, query_max_length)
    d = min(n_doc, max_length)
    d = max(0, min(d, max_length - n_special - q))
    q = min(q, max_length - n_special)  # lastrank's rule where only_second cannot make the pair fit
    return q, d


def longest_first_lengths(n_query: int, n_doc: int, max_length: int, n_special: int) -> tuple[int, int]:
    """Token counts the `tokenizers` library keeps with TruncationStrategy::LongestFirst (what transformers'
    fast tokenizers run for `truncation=True` on a pair): if the shorter one fits beside the longer one's
    remainder, only the longer is cut; otherwise both go to half the budget, the longer one taking the odd
    token. Checked against the library itself in tests/families/test_cross_encoder.py."""
    budget = max_length - n_special
    if n_query + n_doc <= budget:
        return n_query, n_doc
    short = min(n_query, n_doc)
    keep_long = max(short, budget - short) if short <= budget else short
    keep_short = short
    if keep_short + keep_long > budget:
        keep_short = budget // 2
        keep_long = keep_short + budget % 2
    if n_query > n_doc:
        return min(n_query, keep_long), min(n_doc, keep_short)
    return min(n_query, keep_short), min(n_doc, keep_long)


class CrossEncoderBackend(PairwiseBackend):
    """rule: FLAG_RERANKER or COMPUTE_SCORE (module docstring); max_length: its default pair length (None: the
    rule's DEFAULT_MAX_LENGTH); the rest as PairwiseBackend's (max_forward_tokens, model_id, path, ...)."""

    def __init__(self, model: XLMRobertaForSequenceClassification, tokenizer, rule: str, layout: str,
                 device: torch.device, *, max_length: int | None = None, **kw):
        super().__init__(model, tokenizer, device, **kw)
        cfg = model.config
        if cfg.num_labels != 1:
            raise ModelNotAvailableError(f"{self.path}: a reranker has one output logit; this classifier has "
                                         f"num_labels={cfg.num_labels}")
        self.rule = rule
        self.layout = layout
        self.prefix, self.middle, self.suffix = self._template(tokenizer)
        self.n_special = len(self.prefix) + len(self.middle) + len(self.suffix)
        max_length = min(max_length or DEFAULT_MAX_LENGTH[rule], cfg.max_tokens)
        self.capabilities = Capabilities(
            family=FAMILY,
            architecture=f"{ARCHITECTURE} ({'Jina flash' if layout == 'flash' else 'transformers'} layout, "
                         f"{cfg.num_hidden_layers} layers, hidden {cfg.hidden_size})",
            listwise=False, score="sigmoid", raw_score="logit", instruction=False, embedding_dim=None,
            context_length=cfg.max_tokens, max_doc_length=max_length,
            max_query_length=max_length * 3 // 4 if rule == FLAG_RERANKER else max_length,
        )

    @property
    def dtype(self) -> torch.dtype:
        """The model's dtype; torch.int8 for the int8 path (model/int8.py: int8 linear layers, float32 rest)."""
        return torch.int8 if is_int8(self.model) else self.model.classifier.dense.weight.dtype

    @staticmethod
    def _template(tokenizer) -> tuple[list[int], list[int], list[int]]:
        """The special tokens the checkpoint's post-processor puts before, between and after a pair."""
        full = tokenizer.encode("a", "b", add_special_tokens=True)
        seq = full.sequence_ids
        first = [i for i, s in enumerate(seq) if s == 0]
        second = [i for i, s in enumerate(seq) if s == 1]
        ids = full.ids
        return ids[:first[0]], ids[first[-1] + 1:second[0]], ids[second[-1] + 1:]

    def limits(self, request: RerankRequest) -> Limits:
        """(pair max_length, query limit) for this request: the official defaults unless the request sets them,
        capped at the position table."""
        max_length = min(request.options.max_doc_length or self.capabilities.max_doc_length,
                         self.capabilities.context_length)
        if max_length < self.n_special:
            raise InvalidRequestError(f"max_doc_length must be at least {self.n_special} for this model "
                                      f"(the {self.n_special} special tokens of a pair), got {max_length}")
        if request.options.max_query_length is not None:
            return Limits(max_length, request.options.max_query_length)
        return Limits(max_length, max_length * 3 // 4 if self.rule == FLAG_RERANKER else max_length)

    def encode_pairs(self, request: RerankRequest, limits: Limits) -> EncodedPairs:
        max_length, query_limit = limits
        query = self.tokenizer.encode(request.query, add_special_tokens=False).ids
        docs = [e.ids for e in self.tokenizer.encode_batch(list(request.documents), add_special_tokens=False)]
        sequences, doc_tokens, truncated, query_truncated = [], [], [], False
        for i, d in enumerate(docs):
            if self.rule == FLAG_RERANKER:
                nq, nd = flag_reranker_lengths(len(query), len(d), max_length, query_limit, self.n_special)
            else:
                nq, nd = longest_first_lengths(min(len(query), query_limit), len(d), max_length, self.n_special)
            sequences.append(self.prefix + query[:nq] + self.middle + d[:nd] + self.suffix)
            doc_tokens.append(nd)
            if nd < len(d):
                truncated.append(i)
            query_truncated |= nq < len(query)
        return EncodedPairs(sequences, doc_tokens, truncated, query_truncated)

    def token_offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Chunk mode (engine/chunking.py): a document is tokenised on its own (the pair template only puts
        special tokens around it), so its tokens' spans are those of the text encoded alone."""
        return [list(e.offsets) for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def chunk_window(self, request: RerankRequest, limits: Limits) -> int:
        """Own tokens a document keeps uncut beside this request's query: max_length less the pair's special
        tokens and the (cut) query. Under both rules a document that short is never truncated."""
        max_length, query_limit = limits
        n_query = min(len(self.tokenizer.encode(request.query, add_special_tokens=False).ids), query_limit)
        return max(1, max_length - self.n_special - n_query)

    def score_sequences(self, sequences: list[list[int]], prefix_lens: list[int]) -> np.ndarray:
        logits = [np.zeros(0, dtype=np.float32)]  # no sequences (a request without documents): no forward
        with torch.inference_mode():
            for group in cut_blocks([len(s) for s in sequences], self.max_forward_tokens):  # consecutive runs
                logits.append(self.model([sequences[i] for i in group])[:, 0].float().cpu().numpy())
        return np.concatenate(logits).astype(np.float64)


def load(path: Path, device: torch.device, dtype: torch.dtype, *, model_id: str = "", random_weights: bool = False,
         **options) -> CrossEncoderBackend:
    check_files(path, ("config.json", "tokenizer.json"), "XLM-R cross-encoder")
    config = json.loads((path / "config.json").read_text())
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_truncation()  # truncation is the family's own (above), never the file's settings
    tokenizer.no_padding()
    if dtype == torch.int8:  # opt-in: the encoder's linear layers in int8, the head in float32
        check_int8(device)
        model, layout = load_xlmr(path, device, torch.float32)
        quantize_linears(model.roberta.encoder)
    else:
        model, layout = load_xlmr(path, device, dtype)
    rule = COMPUTE_SCORE if is_jina_flash(config) else FLAG_RERANKER
    max_length = None
    if rule == COMPUTE_SCORE:  # compute_score(max_length=None): the tokenizer's model_max_length
        try:
            max_length = json.loads((path / "tokenizer_config.json").read_text()).get("model_max_length")
        except (OSError, ValueError):
            pass
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            max_length = None
    return CrossEncoderBackend(model, tokenizer, rule, layout, device, max_length=max_length, model_id=model_id,
                               path=path, random_weights=random_weights, **options)
