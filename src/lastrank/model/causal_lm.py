"""Causal-LM rerankers' model: the decoder (model/decoder.py) plus only the rows of the LM head a score reads.

Qwen3-Reranker reads logit("yes") - logit("no") at the last position, mxbai-rerank-v2 logit("1") - logit("0").
The full vocabulary projection ([T, 151936]) is never computed: the head keeps two rows of the LM head
(tied embeddings: the same rows of `model.embed_tokens`), and the last layer, the final norm and the head
run at each sequence's last row only. The converted sequence-classification form of Qwen3-Reranker
(`Qwen3ForSequenceClassification` with a one-row `score.weight` = W[yes] - W[no]) keeps that one row.

Fast path (tested equal to the plain per-pair forward in float32, tests/model/test_causal_lm.py):
`score_last` packs many sequences into one forward without padding (attention.Packing), and a prefix all of them
share (the system turn, and for Qwen3-Reranker the instruction and query) is computed once and read by
every sequence from an attention.PrefixCache.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from lastrank.errors import ModelNotAvailableError
from lastrank.model.config import QwenConfig
from lastrank.model.attention import PrefixCache, PrefixCaches
from lastrank.model.decoder import DecoderModel
from lastrank.model.fusion import fused_groups
from lastrank.model.weights import checkpoint_files, read_safetensors, strict_load, weights_file

class CausalLMForRanking(nn.Module):
    """Backbone (`model.*`, the checkpoint's names) + `head`: [2, hidden] rows (positive, negative token) of
    the LM head, raw = logit(positive) - logit(negative); or [1, hidden] (a score head), raw = that logit."""

    def __init__(self, cfg: QwenConfig, head_rows: int = 2):
        super().__init__()
        if head_rows not in (1, 2):
            raise ValueError("head_rows is 2 (positive and negative LM-head rows) or 1 (a score head)")
        self.config = cfg
        self.model = DecoderModel(cfg)
        self.head = nn.Parameter(torch.empty(head_rows, cfg.hidden_size), requires_grad=False)

    def raw_scores(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """[n, hidden] final hidden states at the last positions -> raw scores [n], float32.

        The logits are computed in the model dtype (as the LM head of the official forward computes them),
        the difference in float32."""
        logits = (last_hidden @ self.head.T).float()
        return logits[:, 0] - logits[:, 1] if logits.shape[1] == 2 else logits[:, 0]

    @torch.inference_mode()
    def score_plain(self, ids: list[int]) -> float:
        """One sequence, the whole forward, no shortcut: the check the fast path is tested against."""
        device = self.head.device
        hidden = self.model(torch.tensor(ids, dtype=torch.long, device=device))
        return float(self.raw_scores(hidden[-1:])[0])

    @torch.inference_mode()
    def score_last(self, sequences: list[list[int]], prefix_lens: int | list[int] = 0,
                   groups: list[list[int]] | None = None) -> torch.Tensor:
        """Raw scores [n] of many sequences, packed without padding, each reading the keys and values of its
        first prefix_lens[i] tokens from a cache computed once per distinct prefix.

        Two kinds of forward: one packed forward of every distinct prefix (attention.PrefixCaches.fill), then the
        sequences' own tokens, packed into the forwards `groups` says, each sequence attending to its own
        prefix's cached rows; the last layer, final norm and head only at each sequence's last row. So the
        pairs of several requests (several prefixes) share forwards. Each sequence must be longer than its
        prefix. `groups`: the sequence indices of each forward (the caller's packing, engine/pairs.py
        cut_blocks); None: one forward of them all."""
        device = self.head.device
        if isinstance(prefix_lens, int):
            prefix_lens = [prefix_lens] * len(sequences)
        caches: dict[tuple[int, ...], PrefixCache] = {}
        per_sequence: list[PrefixCache | None] = []
        for s, P in zip(sequences, prefix_lens):
            if P >= len(s):
                raise ValueError("every sequence must have a token after its prefix")
            key = tuple(s[:P])
            if P and key not in caches:
                caches[key] = PrefixCache(torch.tensor(key, dtype=torch.long, device=device))
            per_sequence.append(caches[key] if P else None)
        if caches:
            PrefixCaches.fill(self.model, list(caches.values()))
        out = torch.empty(len(sequences), dtype=torch.float32, device=device)
        for chunk in (groups if groups is not None else [list(range(len(sequences)))] if sequences else []):
            tails = [sequences[j][prefix_lens[j]:] for j in chunk]
            seq_lens = [len(t) for t in tails]
            ids = torch.tensor([t for tail in tails for t in tail], dtype=torch.long, device=device)
            last_rows = torch.tensor(seq_lens, device=device).cumsum(0) - 1
            caches_here = [per_sequence[j] for j in chunk]
            prefix = PrefixCaches(caches_here) if any(c is not None for c in caches_here) else None
            out[chunk] = self.raw_scores(self.model(ids, seq_lens, last_rows, prefix=prefix))
        return out


def _rows(files: list[Path], name: str, ids: list[int], dtype: torch.dtype) -> torch.Tensor | None:
    """Rows `ids` of tensor `name` (read as slices: the whole [vocab, hidden] matrix is never loaded)."""
    for file in files:
        with safe_open(str(file), "pt") as f:
            if name in f.keys():
                t = f.get_slice(name)
                return torch.cat([t[i:i + 1] for i in ids]).to(dtype)
    return None


def load_causal_lm(path: Path, device: torch.device, dtype: torch.dtype, token_ids: tuple[int, int],
                   fuse: bool = True, compile: bool | None = None) -> CausalLMForRanking:
    """Strict load of a Qwen3ForCausalLM / Qwen2ForCausalLM / Qwen3ForSequenceClassification folder.

    token_ids: (positive, negative) token ids whose LM-head rows are kept (ignored for a score head).
    The LM head is `lm_head.weight` unless the config ties it to `model.embed_tokens.weight`.
    compile: opt-in torch.compile of the layers; None: LASTRANK_COMPILE decides (weights.strict_load).
    """
    config = json.loads((path / "config.json").read_text())
    try:
        cfg = QwenConfig.from_dict(config)
    except (TypeError, ValueError) as e:
        raise ModelNotAvailableError(f"{path / 'config.json'}: {e}") from e
    files = checkpoint_files(path)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(read_safetensors(file, dtype, fused_groups(cfg) if fuse else (), skip=("lm_head.weight",)))
    if "score.weight" in state:
        head = state.pop("score.weight")
        if head.shape != (1, cfg.hidden_size):
            raise ModelNotAvailableError(f"{path}: score.weight has shape {tuple(head.shape)}; a reranker's score "
                                         f"head has one row of {cfg.hidden_size}")
    elif cfg.tie_word_embeddings:
        head = state["model.embed_tokens.weight"][list(token_ids)].clone()
    else:
        head = _rows(files, "lm_head.weight", list(token_ids), dtype)
        if head is None:
            raise ModelNotAvailableError(f"{path}: tie_word_embeddings is false but there is no lm_head.weight")
    state = {k: v for k, v in state.items() if k.startswith("model.")}
    state["head"] = head
    return strict_load(lambda: CausalLMForRanking(cfg, head_rows=head.shape[0]), state, device, weights_file(files),
                       fuse=fuse, compile=compile)
