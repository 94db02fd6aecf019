"""Bi-encoders: sentence-transformers folders (modules.json: Transformer -> Pooling [-> Normalize]).

The query and every document are embedded on their own, exactly as sentence-transformers' `encode` does it,
and relevance_score = cosine(query embedding, document embedding) (Capabilities.score "cosine"; raw_score is
the same cosine). `return_embeddings` returns the document vectors `encode` returns (unit length when the
pipeline ends with Normalize). The query is embedded once per request, in the request's first block.
relevance_score is the cosine even where config_sentence_transformers.json names another similarity_fn_name
(lastrank's one score rule, engine/backend.py); for a normalising pipeline dot product and cosine agree.

What is read from the folder (nothing from sentence-transformers at run time):
  - modules.json: a Transformer module (a BERT encoder, model_type "bert", or a Qwen2 / Qwen3 decoder,
    model_type "qwen2" / "qwen3", e.g. jina-code-embeddings-0.5b), then Pooling, then optionally Normalize. Any other module (Dense, LayerNorm, Router, ...) is refused at load with a clear error.
  - 1_Pooling/config.json (the Pooling module's path): "mean", "cls" or "lasttoken" pooling, in the legacy
    `pooling_mode_*_tokens` booleans or the newer `pooling_mode`; `include_prompt` (false: prompt tokens are
    left out of the pooling, as sentence-transformers does).
  - sentence_bert_config.json: max_seq_length (the default token limit; without one, tokenizer_config.json's
    model_max_length capped at the model's positions, as sentence-transformers does) and do_lower_case.
  - config_sentence_transformers.json: `prompts` (named prompt strings prepended to the text).
  - tokenizer.json, through the `tokenizers` library, with sentence-transformers' truncation: the prompt and
    the text are tokenised together, special tokens added, and the whole input cut to at most the limit.

Token limits. `max_doc_length` / `max_query_length` count the whole model input (special tokens and prompt
included), as sentence-transformers' max_seq_length does; their default is the folder's max_seq_length
(256 for all-MiniLM-L6-v2), and a larger request is capped at the model's context length (its
max_position_embeddings: 512 for BERT). A cut input is reported (Usage.truncated_indices, query_truncated), and a
request with truncate=False that would need a cut is refused at plan time.

Task prompts and `instruction` (the documented convention of this family):
  - instruction None: the query gets the prompt named "query", the documents the first of "document",
    "passage", "corpus" that the folder defines (none: no prompt). These are the prompts
    sentence-transformers' encode_query / encode_document pick by default; all-MiniLM-L6-v2 has none.
  - instruction "<task>": the query gets prompt "<task>_query" and the documents "<task>_document" (or
    "<task>_passage"), e.g. instruction="nl2code" for jina-code-embeddings' nl2code_query /
    nl2code_document. Tasks are the names with both a query and a document prompt; they are listed in
    the error an unknown task gets, and Capabilities.instruction is True when the folder defines any.
  - Any other instruction is an InvalidRequestError (400): a bi-encoder has no free-text instruction slot,
    and silently ignoring one would return scores the caller did not ask for.
The backbone runs the sequences of a batch packed, without padding (model/bert.py, model/attention.py); with
last-token pooling on a decoder, its last layer runs at the last rows only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lastrank.engine.backend import Backend, Block, Capabilities, EncodedRequest, Limits, RerankPlan, Scores
from lastrank.engine.pairs import cut_blocks
from lastrank.errors import InvalidRequestError, ModelNotAvailableError
from lastrank.families import BI_ENCODER as SPEC, module_kind, st_modules
from lastrank.model.bert import load_bert
from lastrank.model.decoder_encoder import load_decoder_encoder
from lastrank.model.int8 import check_int8, is_int8, quantize_linears
from lastrank.types import RerankRequest

FAMILY = SPEC.name  # Capabilities.family
POOLING_MODES = ("mean", "cls", "lasttoken")
# The legacy Pooling config booleans, in sentence-transformers' order.
LEGACY_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                       "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                       "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
DOCUMENT_PROMPTS = ("document", "passage", "corpus")
# model_type -> what Capabilities.architecture calls it. BERT: model/bert.py; Qwen2/Qwen3: the shared decoder
# (model/decoder.py) through model/decoder_encoder.py.
BACKBONES = {"bert": "BertModel", "qwen2": "Qwen2Model", "qwen3": "Qwen3Model"}
# The sentence-transformers pipelines this family runs (modules.json's module kinds, in order).
MODULE_LISTS = (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"])


def _read_json(path: Path, what: str) -> dict:
    """A JSON object from the folder, or one clear error naming the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelNotAvailableError(f"{path} ({what}) cannot be read: {e}") from e
    except ValueError as e:
        raise ModelNotAvailableError(f"{path} ({what}) is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ModelNotAvailableError(f"{path} ({what}) is not a JSON object")
    return value


def detect(config: dict, folder: Path) -> bool:
    """A modules.json listing exactly the modules this family runs (MODULE_LISTS) over a backbone it implements:
    as strict as `Pipeline.read`, so a folder with a module it cannot run (a Dense projection, as in ColBERT's
    layout) is not taken for a bi-encoder that then fails to load, and the registry's order does not matter."""
    modules = st_modules(folder)
    if not modules or [module_kind(m) for m in modules] not in MODULE_LISTS:
        return False
    backbone = config if not modules[0].get("path") else _backbone_config(folder / modules[0]["path"])
    return backbone.get("model_type") in BACKBONES


def _backbone_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


@dataclass(frozen=True)
class Pipeline:
    """What a sentence-transformers folder's modules do, as read from its JSON files."""

    transformer_dir: Path  # config.json, weights and tokenizer of the Transformer module
    model_type: str
    pooling: str  # one of POOLING_MODES
    include_prompt: bool
    normalize: bool
    max_seq_length: int | None
    do_lower_case: bool
    prompts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: Path) -> "Pipeline":
        modules = st_modules(folder)
        if not modules:
            raise ModelNotAvailableError(f"{folder} has no usable modules.json (a sentence-transformers folder has one)")
        kinds = [module_kind(m) for m in modules]
        if kinds not in MODULE_LISTS:
            raise ModelNotAvailableError(
                f"{folder}/modules.json lists modules {kinds}; the bi-encoder family supports Transformer -> Pooling "
                f"[-> Normalize] only")
        transformer_dir = folder / modules[0].get("path", "")
        backbone = _backbone_config(transformer_dir)
        model_type = backbone.get("model_type")
        if model_type not in BACKBONES:
            raise ModelNotAvailableError(
                f"{transformer_dir / 'config.json'} has model_type {model_type!r}; the bi-encoder family implements "
                f"{sorted(BACKBONES)}")
        pooling_file = folder / modules[1].get("path", "") / "config.json"
        pooling_cfg = _read_json(pooling_file, "the Pooling module's config")
        pooling = _pooling_mode(pooling_cfg, pooling_file)
        st_file = transformer_dir / "sentence_bert_config.json"
        st_cfg = _read_json(st_file, "the Transformer module's config") if st_file.is_file() else {}
        prompts = {}
        if (folder / "config_sentence_transformers.json").is_file():
            prompts = _read_json(folder / "config_sentence_transformers.json", "sentence-transformers' config").get("prompts") or {}
        if not isinstance(prompts, dict) or not all(isinstance(v, (str, type(None))) for v in prompts.values()):
            raise ModelNotAvailableError(f"{folder / 'config_sentence_transformers.json'}: prompts is not a mapping of strings")
        return cls(
            transformer_dir=transformer_dir,
            model_type=model_type,
            pooling=pooling,
            include_prompt=bool(pooling_cfg.get("include_prompt", True)),
            normalize=kinds[-1] == "Normalize",
            max_seq_length=st_cfg.get("max_seq_length"),
            do_lower_case=bool(st_cfg.get("do_lower_case", False)),
            prompts={k: v or "" for k, v in prompts.items()},  # None means "" to sentence-transformers
        )

    def tasks(self) -> list[str]:
        """Task names with both a query and a document prompt ("nl2code" for nl2code_query / nl2code_document)."""
        return sorted(k.removesuffix("_query") for k in self.prompts
                      if k.endswith("_query") and self._task_document_prompt(k.removesuffix("_query")) is not None)

    def _task_document_prompt(self, task: str) -> str | None:
        for suffix in ("_document", "_passage"):
            if task + suffix in self.prompts:
                return self.prompts[task + suffix]
        return None

    def prompts_for(self, instruction: str | None) -> tuple[str, str]:
        """(query prompt, document prompt) for a request (the convention in the module docstring)."""
        if instruction is None:
            doc = next((self.prompts[k] for k in DOCUMENT_PROMPTS if k in self.prompts), "")
            return self.prompts.get("query", ""), doc
        tasks = self.tasks()
        if instruction in tasks:
            return self.prompts[instruction + "_query"], self._task_document_prompt(instruction)
        if not tasks:
            raise InvalidRequestError(
                "this bi-encoder defines no task prompts, so it takes no instruction; omit the instruction")
        raise InvalidRequestError(
            f"instruction must name one of this bi-encoder's tasks ({', '.join(tasks)}), got {instruction!r}")


def _pooling_mode(cfg: dict, path: Path) -> str:
    mode = cfg.get("pooling_mode")
    if mode is None:
        active = [m for k, m in LEGACY_POOLING_KEYS.items() if cfg.get(k)]
        mode = active if len(active) != 1 else active[0]
        if not active:
            mode = "mean"  # sentence-transformers' default when no flag is set
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if mode not in POOLING_MODES:
        raise ModelNotAvailableError(f"{path}: pooling {mode!r} is not supported; the bi-encoder family implements "
                                     f"{', '.join(POOLING_MODES)} (one mode)")
    return mode


@dataclass
class Encoded:
    ids: list[list[int]]
    truncated: list[bool]
    prompt_len: int  # tokens of the prompt at the start of every sequence (for include_prompt=False)


class PromptTokenizer:
    """The folder's tokenizer.json, encoding `prompt + text` with sentence-transformers' truncation.

    What sentence-transformers does (a transformers fast tokenizer called with truncation="longest_first",
    max_length=max_seq_length) is, for one text: tokenise without special tokens, keep the first
    `limit - n_special` tokens, add the special tokens. Done here the same way, with the limit per call and
    the tokenizer itself left without truncation or padding, so concurrent plans share it safely.
    """

    def __init__(self, path: Path, do_lower_case: bool = False):
        from tokenizers import Tokenizer, normalizers

        self.tok = Tokenizer.from_file(str(path))
        self.tok.no_truncation()  # tokenizer.json may carry a saved setting (MiniLM's: 128, padded to 128)
        self.tok.no_padding()
        if do_lower_case and not _lowercases(self.tok.normalizer):
            # what sentence-transformers does for do_lower_case with a fast tokenizer
            steps = [normalizers.Lowercase()] + ([self.tok.normalizer] if self.tok.normalizer is not None else [])
            self.tok.normalizer = normalizers.Sequence(steps)
        self.n_special = self.tok.num_special_tokens_to_add(is_pair=False)
        # tokenizer_config.json's model_max_length: the fallback limit when sentence_bert_config.json sets none
        # (transformers writes a huge number for "no limit")
        try:
            limit = json.loads((path.parent / "tokenizer_config.json").read_text(encoding="utf-8")).get("model_max_length")
        except (OSError, ValueError, AttributeError):
            limit = None
        self.model_max_length: int | None = limit if isinstance(limit, int) and 0 < limit < 10**12 else None
        self.special_ids = {i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}

    def prompt_length(self, prompt: str) -> int:
        """Tokens `prompt` occupies at the start of an input, as sentence-transformers counts them for
        include_prompt=False: the prompt encoded with special tokens, less a trailing special token."""
        ids = self.tok.encode(prompt).ids
        return len(ids) - 1 if ids and ids[-1] in self.special_ids else len(ids)

    def encode(self, texts: list[str], prompt: str, limit: int, what: str) -> Encoded:
        keep = limit - self.n_special
        if keep < 0:
            raise InvalidRequestError(f"{what} must be at least {self.n_special} for this model (its special tokens)")
        ids, truncated = [], []
        for enc in self.tok.encode_batch([prompt + t for t in texts], add_special_tokens=False):
            cut = len(enc.ids) > keep
            if cut:
                enc.truncate(keep)
            ids.append(self.tok.post_process(enc, add_special_tokens=True).ids)
            truncated.append(cut)
        return Encoded(ids, truncated, self.prompt_length(prompt) if prompt else 0)


def _lowercases(normalizer) -> bool:
    from tokenizers import normalizers

    if isinstance(normalizer, normalizers.Lowercase):
        return True
    if isinstance(normalizer, normalizers.Sequence):
        return any(isinstance(n, normalizers.Lowercase) for n in normalizer)
    return False


@dataclass
class EmbedBlock(Block):
    sequences: list[list[int]]  # the model input of each document of doc_indices
    query: list[int] | None = None  # the query's model input: in the request's first block only
    query_prompt_len: int = 0  # prompt tokens at the start of the query / of each document (pooling may skip them)
    doc_prompt_len: int = 0

    @property
    def n_tokens(self) -> int:
        return sum(len(s) for s in self.sequences) + (len(self.query) if self.query is not None else 0)


@dataclass
class EmbedBlockOutput:
    query_embedding: np.ndarray | None  # float32 [dim]: in the request's first block only
    doc_embeddings: np.ndarray  # float32 [n, dim]


def pooled_rows(seq_lens: list[int], prompt_lens: list[int], mode: str) -> list[int | None]:
    """For "cls" / "lasttoken": the packed row each sequence's vector is ("cls": its first token after the
    prompt_len excluded ones; "lasttoken": its last token); None where no token is left (cut inside the
    prompt), which pools to zeros, as in sentence-transformers."""
    starts = np.cumsum([0] + seq_lens[:-1]).tolist()
    return [None if p >= n else (start + n - 1 if mode == "lasttoken" else start + p)
            for start, n, p in zip(starts, seq_lens, prompt_lens)]


def pool(states: torch.Tensor, seq_lens: list[int], prompt_lens: list[int], mode: str) -> torch.Tensor:
    """Packed token states [T, hidden] -> one vector per sequence [n, hidden], in float32, as
    sentence-transformers' Pooling: "mean" averages the sequence's tokens after its first prompt_len (all of
    them when the prompt is included), "cls" / "lasttoken" take one row (`pooled_rows`)."""
    if mode != "mean":
        return _gather(states, pooled_rows(seq_lens, prompt_lens, mode))
    starts = np.cumsum([0] + seq_lens[:-1]).tolist()
    rows = []
    for start, n, p in zip(starts, seq_lens, prompt_lens):
        if p >= n:
            rows.append(states.new_zeros(states.shape[1], dtype=torch.float32))
        else:  # accumulated in float32, as sentence-transformers does for half precision
            rows.append(states[start + p:start + n].sum(0, dtype=torch.float32) / (n - p))
    return torch.stack(rows)


def _gather(states: torch.Tensor, rows: list[int | None]) -> torch.Tensor:
    out = states.new_zeros(len(rows), states.shape[1], dtype=torch.float32)
    keep = [i for i, r in enumerate(rows) if r is not None]
    if keep:
        out[keep] = states[[rows[i] for i in keep]].float()
    return out


class BiEncoderBackend(Backend):
    """max_block_tokens: tokens of one request's block (the scheduler's unit); max_forward_tokens: tokens of one
    packed forward in run_blocks (bounds activation memory; sequences are never split)."""

    max_block_tokens: int = 8192

    def __init__(self, model: torch.nn.Module, pipeline: Pipeline, tokenizer: PromptTokenizer,
                 device: torch.device, context_length: int, hidden_size: int, architecture: str,
                 max_forward_tokens: int = 16384, *, model_id: str = "", path: Path | None = None,
                 random_weights: bool = False):
        self.model = model
        self.pipeline = pipeline
        self.tokenizer = tokenizer
        self.device = device
        self.max_forward_tokens = max_forward_tokens
        super().__init__(model_id=model_id, path=path, random_weights=random_weights)
        default = min(pipeline.max_seq_length or tokenizer.model_max_length or context_length, context_length)
        self.capabilities = Capabilities(
            family=FAMILY,
            architecture=f"{architecture} ({pipeline.pooling} pooling{', normalised' if pipeline.normalize else ''})",
            listwise=False, score="cosine", raw_score="cosine (the same value)",
            instruction=bool(pipeline.tasks()), embedding_dim=hidden_size, context_length=context_length,
            max_doc_length=default, max_query_length=default,
        )

    @property
    def dtype(self) -> torch.dtype:
        """The model's dtype; torch.int8 for the int8 path (model/int8.py: int8 linear layers, float32 rest)."""
        return torch.int8 if is_int8(self.model) else next(self.model.parameters()).dtype

    @classmethod
    def load(cls, path: Path, device: torch.device, dtype: torch.dtype, *, model_id: str = "",
             random_weights: bool = False, **options) -> "BiEncoderBackend":
        pipeline = Pipeline.read(path)
        tdir = pipeline.transformer_dir
        if not (tdir / "tokenizer.json").is_file():
            raise ModelNotAvailableError(f"{tdir} has no tokenizer.json (the bi-encoder family reads it with `tokenizers`)")
        tokenizer = PromptTokenizer(tdir / "tokenizer.json", pipeline.do_lower_case)
        if pipeline.model_type == "bert":
            if dtype == torch.int8:  # opt-in: int8 linear layers, quantized from the float32 weights
                check_int8(device)
                model = load_bert(tdir, device, torch.float32)
                quantize_linears(model.encoder)
            else:
                model = load_bert(tdir, device, dtype)
        elif dtype == torch.int8:
            raise ModelNotAvailableError(f"dtype int8 is implemented for BERT bi-encoders only; {path} is a "
                                         f"{pipeline.model_type} one (use bfloat16 or float32)")
        else:  # qwen2 / qwen3 (Pipeline.read admits only BACKBONES)
            model = load_decoder_encoder(tdir, device, dtype)
        context, hidden = model.config.max_position_embeddings, model.config.hidden_size
        return cls(model, pipeline, tokenizer, device, context, hidden, BACKBONES[pipeline.model_type],
                   model_id=model_id, path=path, random_weights=random_weights, **options)

    def token_offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Chunk mode (engine/chunking.py): each text's own tokens and their character spans. The text is
        encoded after its prompt, which ends at a word boundary in every prompt a sentence-transformers folder
        defines ("...:\n", "passage: "), so the text's tokens are those it has alone."""
        return [list(e.offsets) for e in self.tokenizer.tok.encode_batch(list(texts), add_special_tokens=False)]

    def limits(self, request: RerankRequest) -> Limits:
        """The request's limits, else the pipeline's max_seq_length (Capabilities), capped at the position table."""
        caps = self.capabilities
        return Limits(min(request.options.max_doc_length or caps.max_doc_length, caps.context_length),
                      min(request.options.max_query_length or caps.max_query_length, caps.context_length))

    def chunk_window(self, request: RerankRequest, limits: Limits) -> int:
        """A document's own tokens that fit: the limit less the special tokens and the document prompt."""
        _, doc_prompt = self.pipeline.prompts_for(request.options.instruction)
        prompt = len(self.tokenizer.tok.encode(doc_prompt, add_special_tokens=False).ids) if doc_prompt else 0
        return max(1, limits.max_doc - self.tokenizer.n_special - prompt)

    def encode_request(self, request: RerankRequest, limits: Limits) -> EncodedRequest:
        query_prompt, doc_prompt = self.pipeline.prompts_for(request.options.instruction)
        q = self.tokenizer.encode([request.query], query_prompt, limits.max_query, "max_query_length")
        d = self.tokenizer.encode(list(request.documents), doc_prompt, limits.max_doc, "max_doc_length")
        cut = [i for i, c in enumerate(d.truncated) if c]
        lengths = [len(s) for s in d.ids]
        lengths[0] += len(q.ids[0])  # the first block also carries the query
        include = self.pipeline.include_prompt
        blocks = [EmbedBlock(request.request_id, b, g, [d.ids[i] for i in g],
                             query=q.ids[0] if b == 0 else None,
                             query_prompt_len=0 if include else q.prompt_len,
                             doc_prompt_len=0 if include else d.prompt_len)
                  for b, g in enumerate(cut_blocks(lengths, self.max_block_tokens))]
        return EncodedRequest(blocks, [len(s) for s in d.ids], cut, q.truncated[0])

    def embed(self, sequences: list[list[int]], prompt_lens: list[int]) -> np.ndarray:
        """The pipeline's sentence embeddings, float32 [n, dim]: packed forwards of at most max_forward_tokens
        (a longer sequence runs alone; none is split), pooling, and (when the folder says so) L2 normalisation
        as torch.nn.functional.normalize does it. An input without tokens (an empty text, with a tokenizer
        that adds none) is a zero vector, as in sentence-transformers, and takes no forward."""
        out = np.zeros((len(sequences), self.capabilities.embedding_dim), dtype=np.float32)
        # shortest first: a packed forward then holds sequences of similar lengths, and those of one length lie
        # side by side, so the backbone's attention reads them as views instead of gathering them
        # (model/bert.py, EncoderPacking); every sequence's vector is the same in any order
        kept = sorted((i for i, s in enumerate(sequences) if s), key=lambda i: len(sequences[i]))
        for group in cut_blocks([len(sequences[i]) for i in kept], self.max_forward_tokens):
            chunk = [kept[g] for g in group]
            out[chunk] = self._embed_packed([sequences[c] for c in chunk], [prompt_lens[c] for c in chunk])
        return out

    @torch.inference_mode()
    def _embed_packed(self, sequences: list[list[int]], prompt_lens: list[int]) -> np.ndarray:
        ids = torch.tensor([t for s in sequences for t in s], dtype=torch.long, device=self.device)
        lens = [len(s) for s in sequences]
        if self.pipeline.pooling == "lasttoken" and self.pipeline.model_type != "bert":
            # causal: a sequence's last row has seen all of it, so the decoder's last layer and final norm run
            # at those rows only (DecoderModel's `rows`)
            rows = pooled_rows(lens, prompt_lens, "lasttoken")
            kept = [i for i, r in enumerate(rows) if r is not None]
            vectors = torch.zeros(len(sequences), self.capabilities.embedding_dim, device=self.device)
            if kept:
                at = torch.tensor([rows[i] for i in kept], dtype=torch.long, device=self.device)
                vectors[kept] = self.model(ids, lens, rows=at).float()
        else:
            vectors = pool(self.model(ids, lens), lens, prompt_lens, self.pipeline.pooling)
        if self.pipeline.normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return vectors.cpu().numpy()

    def run_blocks(self, blocks: list[EmbedBlock]) -> list[EmbedBlockOutput]:
        """One output per block, in order; every sequence of the batch goes through `embed` together."""
        if not blocks:
            return []
        sequences, prompt_lens = [], []
        for b in blocks:
            if b.query is not None:
                sequences.append(b.query)
                prompt_lens.append(b.query_prompt_len)
            sequences += b.sequences
            prompt_lens += [b.doc_prompt_len] * len(b.sequences)
        vectors = self.embed(sequences, prompt_lens)
        outputs, at = [], 0
        for b in blocks:
            q = None
            if b.query is not None:
                q, at = vectors[at], at + 1
            outputs.append(EmbedBlockOutput(q, vectors[at:at + len(b.sequences)]))
            at += len(b.sequences)
        return outputs

    def scores(self, plan: RerankPlan, outputs: list[EmbedBlockOutput]) -> Scores:
        q = outputs[0].query_embedding
        if q is None:
            raise RuntimeError("the first block of a request carries no query embedding. This is a bug.")
        D = np.empty((len(plan.request.documents), q.shape[0]), dtype=np.float32)
        for block, out in zip(plan.blocks, outputs):
            D[block.doc_indices] = out.doc_embeddings
        # sentence-transformers' cos_sim: both sides scaled to unit length (norms clamped at 1e-12, so a zero
        # vector scores 0, not NaN), then the dot product. In float64, from the float32 vectors.
        q64, D64 = q.astype(np.float64), D.astype(np.float64)
        cos = (D64 @ q64) / (np.maximum(np.linalg.norm(D64, axis=1), 1e-12) * max(np.linalg.norm(q64), 1e-12))
        return Scores(relevance=cos, raw=cos, embeddings=D)


def load(path: Path, device: torch.device, dtype: torch.dtype, **kw) -> BiEncoderBackend:
    return BiEncoderBackend.load(path, device, dtype, **kw)
