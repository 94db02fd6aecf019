"""Jina Reranker V3's head: a Qwen3 decoder (model/decoder.py, no LM head) plus a small MLP projector.

Module attributes mirror the checkpoint's tensor names (`model.layers.{i}...`, `projector.0`,
`projector.2`), so the official safetensors load strictly with no rename table.

Speed (numbers in docs/benchmarks.md): `JinaForRanking.embed_blocks` computes only what the
official forward reads (prompt cut after the query marker; last layer, final norm and projector at the
marker rows only), can skip the fixed system turn whose keys and values are cached (attention.PrefixCache), and
can pack several blocks into one forward (attention.Packing).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lastrank.errors import ModelNotAvailableError
from lastrank.model.attention import PrefixCache
from lastrank.model.config import QwenConfig
from lastrank.model.decoder import DecoderModel
from lastrank.model.fusion import fused_groups
from lastrank.model.weights import read_safetensors, strict_load

# Fixed by the official modeling.py (`self.projector_dim = 512`), not by config.json.
PROJECTOR_OUT_DIM = 512
# The markers the prompt puts after each document and after the query: the hidden states read at them are
# what the projector turns into vectors. Their ids in the official tokenizer (model/tokenizer.py adds them).
DOC_MARKER = "<|embed_token|>"
QUERY_MARKER = "<|rerank_token|>"
DOC_MARKER_ID = 151670
QUERY_MARKER_ID = 151671


def check_config(cfg: QwenConfig) -> None:
    """What makes a decoder config a Jina Reranker V3 backbone: a Qwen3 without projection biases."""
    if cfg.model_type != "qwen3" or cfg.attention_bias:
        raise ValueError(f"jina-reranker-v3 is a Qwen3 decoder without attention biases; config.json has "
                         f"model_type={cfg.model_type!r}, attention_bias={cfg.attention_bias}")


class JinaForRanking(nn.Module):
    """Backbone + projector. The backend calls `embed_blocks`, with a prefix cache it fills from its first
    forward (on_kv); `prefix_cache` fills one by running the prefix alone, the tests' check of that path."""

    def __init__(self, cfg: QwenConfig, projector_hidden: int | None = None, projector_out: int = PROJECTOR_OUT_DIM):
        super().__init__()
        check_config(cfg)
        self.config = cfg
        projector_hidden = projector_hidden or cfg.hidden_size // 2
        self.model = DecoderModel(cfg)
        self.projector = nn.Sequential(
            nn.Linear(cfg.hidden_size, projector_hidden, bias=False),
            nn.ReLU(),
            nn.Linear(projector_hidden, projector_out, bias=False),
        )

    @torch.inference_mode()
    def prefix_cache(self, ids: list[int] | torch.Tensor) -> PrefixCache:
        """Run the prefix tokens alone once and keep every layer's keys and values (see PrefixCache)."""
        device = self.model.embed_tokens.weight.device
        cache = PrefixCache(torch.as_tensor(ids, dtype=torch.long, device=device))
        if cache.ids.ndim != 1 or len(cache) == 0:
            raise ValueError("a prefix is a non-empty 1-D sequence of token ids")
        # rows: the last layer's keys and values are all computed, its queries and MLP only for one row
        self.model(cache.ids, rows=torch.tensor([len(cache) - 1], device=device), on_kv=cache.keep)
        return cache

    @torch.inference_mode()
    def embed_blocks(
        self, blocks: list[torch.Tensor], doc_marker_id: int, query_marker_id: int, attention: str = "segments",
        prefix: PrefixCache | None = None, on_kv: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Several block prompts in ONE packed forward -> per block (query [512], docs [n, 512], cosines [n]).

        Only what the official forward reads is computed (attention is causal, so nothing here changes the
        hidden states that are read):
          - each prompt is cut after its query marker (the chat suffix after it cannot influence the
            marker rows);
          - the last layer's attention output and MLP, and the final norm, run only at the marker rows;
          - with `prefix`, the cached prefix tokens are not run again (used only if every block starts
            with them; otherwise the blocks run whole).
        on_kv: passed to the backbone (each layer's keys and values, attention layout).
        """
        if prefix is not None and (not all(prefix.starts(b) for b in blocks)
                                   or bool(torch.isin(prefix.ids, torch.tensor([doc_marker_id, query_marker_id],
                                                                                device=prefix.ids.device)).any())):
            prefix = None  # run the prompts whole; a prefix holding a marker would hide its row
        skip = 0 if prefix is None else len(prefix)
        ids, seq_lens, rows, spans = [], [], [], []
        offset = 0
        for input_ids in blocks:
            is_query = input_ids == query_marker_id
            n_query = int(is_query.sum())
            if n_query != 1:
                raise RuntimeError(f"expected exactly one query marker in a block, found {n_query}. This is a bug.")
            end = int(is_query.nonzero()[0, 0]) + 1
            kept = input_ids[skip:end]
            doc_rows = (kept == doc_marker_id).nonzero().flatten()
            if len(doc_rows) != int((input_ids == doc_marker_id).sum()):
                raise RuntimeError("a document marker follows the query marker in a block prompt. This is a bug.")
            ids.append(kept)
            seq_lens.append(end - skip)
            # Marker rows in prompt order (docs precede the query marker in the template), then the query.
            rows.append(doc_rows + offset)
            rows.append(torch.tensor([offset + end - skip - 1], device=input_ids.device))
            spans.append(len(doc_rows))
            offset += end - skip
        packed_ids = torch.cat(ids) if len(ids) > 1 else ids[0]
        row_index = torch.cat(rows)  # ascending: blocks in order, each block's markers in prompt order
        hidden = self.model(packed_ids, seq_lens, row_index, attention, prefix, on_kv)  # [n_markers, hidden]
        results, start = [], 0
        for n_docs in spans:
            doc_hidden, query_hidden = hidden[start:start + n_docs], hidden[start + n_docs:start + n_docs + 1]
            start += n_docs + 1
            d = self.projector(doc_hidden)
            q = self.projector(query_hidden)
            scores = F.cosine_similarity(d, q.expand_as(d), dim=-1)
            results.append((q[0], d, scores))
        return results


def load_jina_v3(path: Path, device: torch.device, dtype: torch.dtype, fuse: bool = True,
                 compile: bool | None = None) -> JinaForRanking:
    """Strict load of a jina-reranker-v3 folder (config.json + model.safetensors, the official names).

    fuse: concatenate q/k/v and gate/up weights (`fusion.fuse_projections`); the reader already places them
    side by side, so fusing copies nothing on CPU.
    compile: opt-in torch.compile of the layers (`fusion.enable_compile`); None: LASTRANK_COMPILE decides
    (weights.strict_load). Off by default: the first compile costs tens of seconds.
    """
    cfg = QwenConfig.from_file(path / "config.json")
    file = path / "model.safetensors"
    # lm_head.weight is tied to embed_tokens; the reranker has no LM head: never read
    state = read_safetensors(file, dtype, fused_groups(cfg) if fuse else (), skip=("lm_head.weight",))
    for name in ("projector.0.weight", "projector.2.weight"):
        if name not in state:
            raise ModelNotAvailableError(f"{file} has no {name}: not a jina-reranker-v3 checkpoint")
    return strict_load(lambda: JinaForRanking(cfg, projector_hidden=state["projector.0.weight"].shape[0],
                                              projector_out=state["projector.2.weight"].shape[0]),
                       state, device, file, fuse=fuse, compile=compile)
