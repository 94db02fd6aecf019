"""Independent references for the XLM-R cross-encoders (bge-reranker-v2-m3, jina-reranker-v2), shared by
tests/model/test_xlmr.py, tests/families/test_cross_encoder.py and benchmarks/bench_cross_encoder.py.
Nothing here imports lastrank.

- `official_flash_forward`: the official jina-reranker-v2 forward, ported from its remote code as the source
  describes it (embedding.py: word + create_position_ids_from_input_ids positions + token type 0, then emb_ln;
  block.py Block(prenorm=False): norm1(x + out_proj(attn)), norm2(x + fc2(gelu(fc1))); mha.py SelfAttention:
  Wqkv split "(three h d)", softmax(q k^T / sqrt(d)) with -10000 added at pad keys; the classification head
  on <s>: dense, tanh, out_proj).
- `official_tokenizer`, `flag_reranker_inputs`, `compute_score_inputs`: the checkpoint's tokenizer as the
  official codes load it, and the tokenisation of FlagReranker.compute_score (bge) and of jina-reranker-v2's
  compute_score (tests/families/test_cross_encoder.py's docstring says how each is called).
- `flash_as_transformers`: the flash tensors renamed onto transformers' XLM-R names (what vLLM's
  jina_to_vllm_mapper does), Wqkv split into query/key/value.
"""

import math

import torch
import torch.nn.functional as F


def padded(seqs: list[list[int]], pad: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(map(len, seqs))
    ids = torch.full((len(seqs), L), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask


def flash_state(folder) -> dict:
    return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)


def official_flash_forward(sd: dict, cfg: dict, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The official jina-reranker-v2 forward, ported from its source's description (module docstring)."""
    H, nh, eps, pad = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"], cfg["pad_token_id"]
    d = H // nh
    B, S = ids.shape
    nonpad = ids.ne(pad).long()
    pos = torch.cumsum(nonpad, dim=1) * nonpad + pad  # transformers' create_position_ids_from_input_ids
    e = "roberta.embeddings."
    x = sd[e + "word_embeddings.weight"][ids] + sd[e + "position_embeddings.weight"][pos] \
        + sd[e + "token_type_embeddings.weight"][0]
    x = F.layer_norm(x, (H,), sd["roberta.emb_ln.weight"], sd["roberta.emb_ln.bias"], eps)
    key_bias = (1 - mask.float()) * -10000.0
    for i in range(cfg["num_hidden_layers"]):
        p = f"roberta.encoder.layers.{i}."
        qkv = F.linear(x, sd[p + "mixer.Wqkv.weight"], sd[p + "mixer.Wqkv.bias"]).view(B, S, 3, nh, d)
        q, k, v = qkv.unbind(2)
        scores = torch.einsum("bthd,bshd->bhts", q, k / math.sqrt(d)) + key_bias[:, None, None, :]
        ctx = torch.einsum("bhts,bshd->bthd", torch.softmax(scores, dim=-1), v).reshape(B, S, H)
        attn_out = F.linear(ctx, sd[p + "mixer.out_proj.weight"], sd[p + "mixer.out_proj.bias"])
        x = F.layer_norm(attn_out + x, (H,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
        h = F.gelu(F.linear(x, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]), approximate="none")
        mlp_out = F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        x = F.layer_norm(mlp_out + x, (H,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
    cls = torch.tanh(F.linear(x[:, 0], sd["classifier.dense.weight"], sd["classifier.dense.bias"]))
    return F.linear(cls, sd["classifier.out_proj.weight"], sd["classifier.out_proj.bias"])[:, 0]


def flash_as_transformers(sd: dict, cfg: dict) -> dict:
    """The flash tensors renamed onto transformers' XLM-R (vLLM's jina_to_vllm_mapper does the same renames)."""
    out = {}
    renames = {"mixer.out_proj": "attention.output.dense", "norm1": "attention.output.LayerNorm",
               "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense", "norm2": "output.LayerNorm"}
    for name, t in sd.items():
        if name.startswith("roberta.emb_ln."):
            out[name.replace("roberta.emb_ln.", "roberta.embeddings.LayerNorm.")] = t
        elif ".mixer.Wqkv." in name:
            for part, chunk in zip(("query", "key", "value"), t.chunk(3, dim=0)):
                out[name.replace("layers.", "layer.").replace("mixer.Wqkv", f"attention.self.{part}")] = chunk
        elif name.startswith("roberta.encoder.layers."):
            new = name.replace("layers.", "layer.")
            for old, repl in renames.items():
                new = new.replace(f".{old}.", f".{repl}.")
            out[new] = t
        else:
            out[name] = t
    return out


def transformers_model(folder):
    """transformers' XLMRobertaForSequenceClassification on a checkpoint folder of either layout, float32."""
    import json

    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    if (folder / "model.safetensors").is_file():
        return XLMRobertaForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    cfg = json.loads((folder / "config.json").read_text())
    model = XLMRobertaForSequenceClassification(
        XLMRobertaConfig(**{k: v for k, v in cfg.items() if k not in ("auto_map", "architectures")})).eval()
    missing, unexpected = model.load_state_dict(flash_as_transformers(flash_state(folder), cfg), strict=False)
    assert not unexpected and all("position_ids" in m for m in missing), (missing, unexpected)
    return model


def padded_logits(model, seqs: list[list[int]]) -> torch.Tensor:
    """One padded batch through a transformers model, attention mask over the real tokens."""
    ids, mask = padded(seqs)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits[:, 0]


def official_tokenizer(folder):
    """The checkpoint's tokenizer.json as transformers 4 (what FlagEmbedding and Jina's code run on) loads it
    through AutoTokenizer: the file's own pipeline, tokenizer_config.json's model_max_length and special tokens.
    (transformers 5's XLMRobertaTokenizer rebuilds the pipeline from the vocabulary instead, without the file's
    normaliser: a full-width comma becomes <unk> there; AutoTokenizer on jina-v2's folder also asks to run its
    remote code. Neither is what the official code ran on.)"""
    import json

    from transformers import PreTrainedTokenizerFast

    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    specials = {k: v for k, v in cfg.items() if k.endswith("_token")}
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                   model_max_length=cfg["model_max_length"], **specials)


def flag_reranker_inputs(tok, query, docs, max_length=512, query_max_length=None) -> list[list[int]]:
    """FlagReranker.compute_score's tokenisation (tests/families/test_cross_encoder.py's docstring)."""
    if query_max_length is None:
        query_max_length = max_length * 3 // 4
    queries = tok([query] * len(docs), return_tensors=None, add_special_tokens=False, max_length=query_max_length,
                  truncation=True)["input_ids"]
    passages = tok(docs, return_tensors=None, add_special_tokens=False, max_length=max_length,
                   truncation=True)["input_ids"]
    out = []
    for q, d in zip(queries, passages):
        surplus = len(q) + len(d) + 4 - max_length  # XLM-R adds 4 special tokens to a pair
        if surplus > 0:
            d = d[:-surplus]
        out.append([tok.cls_token_id] + q + [tok.sep_token_id, tok.sep_token_id] + d + [tok.sep_token_id])
    return out


def compute_score_inputs(tok, query, docs, max_length=None) -> list[list[int]]:
    """jina-reranker-v2's compute_score tokenisation: one call, longest_first truncation, padded."""
    enc = tok([[query, d] for d in docs], padding=True, truncation=True, return_tensors="pt", max_length=max_length)
    return [row[mask.bool()].tolist() for row, mask in zip(enc["input_ids"], enc["attention_mask"])]
