"""An independent reference of the official jina-reranker-v3 ``rerank()``, for parity tests.

Written from ../shared/docs/model-spec.md (§4 prompt, §5 forward, §6 rerank algorithm) the way the
official ``modeling.py`` does it, on top of transformers -- deliberately NOT on lastrank's own
engine, prompt or model code, so that it catches mistakes there:

* backbone: ``transformers.Qwen3Model`` built from the checkpoint's ``config.json`` (SDPA attention,
  the HF default), weights from ``model.safetensors`` (key prefix ``model.``);
* projector: ``nn.Sequential(Linear, ReLU, Linear)`` from ``projector.0.weight`` / ``projector.2.weight``
  (widths read from the tensor shapes);
* tokenizer: ``AutoTokenizer.from_pretrained(checkpoint_dir, trust_remote_code=True)``, called exactly
  as the official code calls it (truncation, decode round-trip, one-string prompt);
* merge: numpy, exactly as §6 (``np.average`` with the block weights, ``np.dot`` cosine,
  ``np.argsort(...)[::-1]``).

The prompt is a ``str.format`` template cut from §4's rendered literal, not pieces concatenated as in
lastrank's ``families/jina_v3/prompt.py``, so the two are written differently and a shared mistake is unlikely.

The only extension over the official ``rerank()`` is ``instruction``: the official method always
passes ``instruction=None``; here it is forwarded to the prompt builder, which renders the
``<instruct>`` section exactly as §4 (``if instruction:``), its text sanitised like the query's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from support.ranking_order import order_violations

DOC_MARKER = "<|embed_token|>"
QUERY_MARKER = "<|rerank_token|>"
BLOCK_SIZE = 125

# §4's system prompt, sentence by sentence.
SYSTEM_PROMPT = " ".join([
    "You are a search relevance expert who can determine a ranking of the passages based on how relevant they are to the query.",
    "If the query is a question, how relevant a passage is depends on how well it answers the question.",
    "If not, try to analyze the intent of the query and assess how well each passage satisfies the intent.",
    "If an instruction is provided, you should follow the instruction when determining the ranking.",
])

# §4's whole prompt as one str.format template: the spec's rendered literal for query "Q" and documents
# ["Doc A", "Doc B"] with the variable parts cut out. lastrank's families/jina_v3/prompt.py concatenates pieces with
# f-strings and a join instead; built two ways, a shared slip is unlikely. Only the template is parsed by
# str.format, so braces in the user's text are safe.
PROMPT_TEMPLATE = (
    "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
    "I will provide you with {n} passages, each indicated by a numerical identifier. "
    "Rank the passages based on their relevance to query: {query}\n"
    "{instruct}"
    "{passages}"
    "<query>\n{query}<|rerank_token|>\n</query><|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
INSTRUCT_TEMPLATE = "<instruct>\n{instruction}\n</instruct>\n"  # only `if instruction:`
PASSAGE_TEMPLATE = '<passage id="{i}">\n{text}<|embed_token|>\n</passage>\n'  # i from 0 in every block
PROMPT_PREFIX = PROMPT_TEMPLATE[: PROMPT_TEMPLATE.index("I will")].format(system=SYSTEM_PROMPT)


def sanitize(text: str) -> str:
    """§4: remove every literal query marker, then every literal document marker. Nothing else."""
    return text.replace(QUERY_MARKER, "").replace(DOC_MARKER, "")


def render_prompt(query: str, docs: list[str], instruction: str | None = None) -> str:
    """§4 for the docs of ONE block. The instruction (lastrank's extension; the official rerank() passes None)
    is sanitised like the query and documents: a marker there would add a phantom document or query vector."""
    query = sanitize(query)
    return PROMPT_TEMPLATE.format(
        system=SYSTEM_PROMPT,
        n=len(docs),
        query=query,
        instruct=INSTRUCT_TEMPLATE.format(instruction=sanitize(instruction)) if instruction else "",
        passages="".join(PASSAGE_TEMPLATE.format(i=i, text=sanitize(d)) for i, d in enumerate(docs)),
    )


def load_reference_backbone(checkpoint_dir, dtype: torch.dtype = torch.float32, state: dict | None = None):
    """transformers' Qwen3Model from the checkpoint's own config.json (SDPA attention), with the
    checkpoint's `model.*` weights (strict: every backbone tensor present, nothing left over)."""
    from transformers import Qwen3Config, Qwen3Model

    checkpoint_dir = Path(checkpoint_dir)
    config = Qwen3Config.from_pretrained(str(checkpoint_dir), attn_implementation="sdpa")
    if state is None:
        state = load_file(str(checkpoint_dir / "model.safetensors"))
    backbone_sd = {k[len("model."):]: v.to(torch.float32) for k, v in state.items() if k.startswith("model.")}
    backbone = Qwen3Model(config)
    backbone.load_state_dict(backbone_sd, strict=True)
    return backbone.to(dtype).eval(), config


class ReferenceReranker:
    """The official algorithm, re-implemented from the spec on transformers + numpy."""

    def __init__(self, checkpoint_dir, dtype: torch.dtype = torch.float32):
        from transformers import AutoTokenizer

        self.checkpoint_dir = Path(checkpoint_dir)
        self.dtype = dtype

        # Tokenizer, as `_ensure_tokenizer` does it (no fix_mistral_regex).
        tok = AutoTokenizer.from_pretrained(str(self.checkpoint_dir), trust_remote_code=True)
        if tok.pad_token is None:
            tok.pad_token = tok.unk_token
        tok.padding_side = "left"
        self.tokenizer = tok
        # Marker ids looked up by string; with the official tokenizer they are 151670 / 151671.
        self.doc_marker_id = tok.convert_tokens_to_ids(DOC_MARKER)
        self.query_marker_id = tok.convert_tokens_to_ids(QUERY_MARKER)

        state = load_file(str(self.checkpoint_dir / "model.safetensors"))
        self.backbone, self.config = load_reference_backbone(self.checkpoint_dir, dtype, state)

        # Projector: widths from the tensor shapes, not from constants (§2.3).
        w0 = state["projector.0.weight"].to(torch.float32)
        w2 = state["projector.2.weight"].to(torch.float32)
        projector = nn.Sequential(
            nn.Linear(w0.shape[1], w0.shape[0], bias=False),
            nn.ReLU(),
            nn.Linear(w2.shape[1], w2.shape[0], bias=False),
        )
        projector.load_state_dict({"0.weight": w0, "2.weight": w2}, strict=True)
        self.projector = projector.to(dtype).eval()

    # ---- §5 -------------------------------------------------------------------------------
    @torch.no_grad()
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states after the final norm, [batch, T, hidden]."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        h = self.hidden_states(input_ids, attention_mask)
        batch, _, dim = h.shape
        query_idx = torch.eq(input_ids, self.query_marker_id)
        doc_idx = torch.eq(input_ids, self.doc_marker_id)
        doc_embeds = h[doc_idx].view(batch, -1, dim)
        query_embeds = h[query_idx].unsqueeze(1)
        doc_embeds = self.projector(doc_embeds)
        query_embeds = self.projector(query_embeds)
        scores = torch.nn.functional.cosine_similarity(doc_embeds, query_embeds.expand_as(doc_embeds), dim=-1)
        return scores, query_embeds, doc_embeds

    # ---- §6 step 2 ------------------------------------------------------------------------
    def _truncate(self, text: str, max_length: int) -> tuple[str, int]:
        ids = self.tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        if len(ids) >= max_length:
            text = self.tokenizer.decode(ids)
        return text, len(ids)

    def tokenize_prompt(self, prompt: str) -> dict:
        return self.tokenizer(text=[prompt], padding=True, padding_side="left", return_tensors="pt")

    def plan(self, query, documents, max_doc_length=2048, max_query_length=512):
        """Truncation + blocking (§6 steps 2-3). Returns (query, [[(doc_index, doc_text), ...], ...])."""
        max_length = self.tokenizer.model_max_length
        docs, doc_lengths = [], []
        for doc in documents:
            d, n = self._truncate(doc, max_doc_length)
            docs.append(d)
            doc_lengths.append(n)
        query, query_length = self._truncate(query, max_query_length)

        blocks, block = [], []
        cap = max_length - 2 * query_length
        for i, (doc, n_tokens) in enumerate(zip(docs, doc_lengths)):
            block.append((i, doc))
            cap -= n_tokens
            if len(block) >= BLOCK_SIZE or cap <= max_doc_length:
                blocks.append(block)
                block = []
                cap = max_length - 2 * query_length
        if block:
            blocks.append(block)
        return query, blocks

    def block_prompts(self, query, documents, max_doc_length=2048, max_query_length=512, instruction=None):
        """[(doc_indices, input_ids), ...] per block: what one forward pass per block sees."""
        t_query, blocks = self.plan(query, documents, max_doc_length, max_query_length)
        out = []
        for block in blocks:
            ids = self.tokenize_prompt(render_prompt(t_query, [d for _, d in block], instruction))["input_ids"][0]
            out.append(([i for i, _ in block], ids.tolist()))
        return out

    # ---- §6 -------------------------------------------------------------------------------
    @torch.no_grad()
    def rerank(
        self,
        query: str,
        documents: list[str],
        top_n: int | None = None,
        return_embeddings: bool = False,
        max_doc_length: int = 2048,
        max_query_length: int = 512,
        instruction: str | None = None,
    ) -> list[dict]:
        if not documents:
            return []  # the official code crashes in np.average here; lastrank's API says [].
        t_query, blocks = self.plan(query, documents, max_doc_length, max_query_length)
        self.last_blocks = blocks  # for tests that want to check the block structure

        doc_embeddings, query_embeddings, block_weights = [], [], []
        for block in blocks:
            prompt = render_prompt(t_query, [d for _, d in block], instruction)
            inputs = self.tokenize_prompt(prompt)
            scores, q, d = self.forward(inputs["input_ids"], inputs["attention_mask"])
            doc_embeddings.extend(d[0].cpu().float().numpy())
            query_embeddings.append(q[0].cpu().float().numpy())
            s = scores.view(-1).cpu().float().numpy()
            block_weights.append(((1.0 + s) / 2.0).max())

        query_embeddings = np.array(query_embeddings)
        doc_embeddings = np.array(doc_embeddings)
        q = np.average(query_embeddings, axis=0, weights=block_weights)
        scores = np.dot(q, doc_embeddings.T) / (np.linalg.norm(q) * np.linalg.norm(doc_embeddings, axis=1))
        order = np.argsort(scores[0])[::-1]
        top_n = len(documents) if top_n is None else min(top_n, len(documents))
        return [
            {
                "document": documents[order[i]],
                "relevance_score": scores[0][order[i]],
                "index": order[i],
                "embedding": doc_embeddings[order[i]] if return_embeddings else None,
            }
            for i in range(top_n)
        ]


def load_config(checkpoint_dir) -> dict:
    return json.loads((Path(checkpoint_dir) / "config.json").read_text())


# ---- helpers shared by the parity tests -------------------------------------------------------

_CACHE: dict = {}


def cached_reference(checkpoint_dir, dtype: torch.dtype = torch.float32) -> ReferenceReranker:
    """One ReferenceReranker per (checkpoint, dtype) for the whole session."""
    key = (str(checkpoint_dir), dtype)
    if key not in _CACHE:
        _CACHE[key] = ReferenceReranker(checkpoint_dir, dtype=dtype)
    return _CACHE[key]


SCORE_ATOL = 1e-5


def assert_parity(got: list[dict], want: list[dict], documents: list, *, embeddings: bool = False, atol: float = SCORE_ATOL):
    """lastrank's output vs the reference's: same length, the same order wherever the reference's scores differ
    by more than atol, scores and embeddings to atol, the returned document being the ORIGINAL input string."""
    assert isinstance(got, list), type(got)
    want_idx = [int(w["index"]) for w in want]
    got_idx = [int(g["index"]) for g in got]
    want_scores = np.array([float(w["relevance_score"]) for w in want], dtype=np.float64)
    got_by_index = {int(g["index"]): float(g["relevance_score"]) for g in got}
    assert len(got) == len(want), f"length: lastrank {len(got)} vs reference {len(want)}"
    # Scores first (per document index), so that a failure reports the numbers, then the order.
    diffs = [abs(got_by_index[i] - s) if i in got_by_index else float("inf") for i, s in zip(want_idx, want_scores)]
    worst = int(np.argmax(diffs)) if diffs else 0
    assert not diffs or max(diffs) <= atol, (
        f"score mismatch: max |lastrank - reference| = {max(diffs):.3e} > {atol:g} at index {want_idx[worst]} "
        f"(reference {want_scores[worst]:.8f}, lastrank {got_by_index.get(want_idx[worst])})"
    )
    # The order, wherever the reference's scores differ by more than atol (tied ones may come either way:
    # tests/support/ranking_order.py says why).
    by_index = np.full(len(documents), np.nan)
    by_index[want_idx] = want_scores
    bad = order_violations(got_idx, by_index, atol)
    assert not bad, (
        f"order differs: lastrank {got_idx[:8]} vs reference {want_idx[:8]}; first swap: {bad[0][0]} above "
        f"{bad[0][1]}, reference {by_index[bad[0][0]]:.8f} < {by_index[bad[0][1]]:.8f}"
    )
    for g in got:
        assert set(g) >= {"index", "relevance_score", "document", "embedding"}, sorted(g)
        assert isinstance(g["index"], int) and not isinstance(g["index"], bool), type(g["index"])
        assert isinstance(g["relevance_score"], float), type(g["relevance_score"])
        assert g["document"] is documents[g["index"]] or g["document"] == documents[g["index"]], (
            f"document at index {g['index']} is not the original input: {g['document'][:80]!r}"
        )
    for g, w in zip(got, want):
        if embeddings:
            assert g["embedding"] is not None, "return_embeddings=True but embedding is None"
            e = np.asarray(g["embedding"], dtype=np.float64)
            assert e.shape == w["embedding"].shape, (e.shape, w["embedding"].shape)
            d = float(np.max(np.abs(e - w["embedding"])))
            assert d <= atol, f"embedding of index {g['index']}: max abs diff {d:.3e} > {atol:g}"
        else:
            assert g["embedding"] is None, "embedding returned without return_embeddings"


def kendall_tau(a, b) -> float:
    """Kendall tau-b between two score vectors (scipy when installed, else a small O(n^2) version)."""
    try:
        from scipy.stats import kendalltau

        return float(kendalltau(a, b).statistic)
    except ImportError:  # pragma: no cover
        a, b = np.asarray(a), np.asarray(b)
        n = len(a)
        conc = disc = ta = tb = 0
        for i in range(n):
            for j in range(i + 1, n):
                x, y = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
                if x == 0 and y == 0:
                    continue
                if x == 0:
                    ta += 1
                elif y == 0:
                    tb += 1
                elif x == y:
                    conc += 1
                else:
                    disc += 1
        return (conc - disc) / np.sqrt((conc + disc + ta) * (conc + disc + tb))
