"""The official jina-reranker-m0 compute_score, step by step, on transformers: the reference of
tests/families/test_jina_m0.py (float32 parity) and of benchmarks/bench_m0.py (time at the real shape).

What the official modeling.py (`JinaVLForRanking.compute_score`) runs, restated from it: the prompt of
formatting_prompts_func (document first, then the query; an image is <|vision_start|><|image_pad|><|vision_end|>),
the text-document "TEMP FIX" truncation, images read by its load_images (PIL as given, any str through
transformers' load_image), the processor's steps (transformers' Qwen2TokenizerFast from the folder,
left padding, truncation to max_length - 1, each <|image_pad|> expanded to grid.prod() / 4 tokens,
Qwen2VLImageProcessorPil with min_pixels=3136, max_pixels=602112; the Qwen2VLProcessor itself needs torchvision
for its video half, which is not installed), token 100 appended, Qwen2VLForConditionalGeneration with its LM
head replaced by Identity (as the official class does), the last hidden state at the last position, the head
(score.0 Linear, ReLU, score.2 Linear), sigmoid(logit - 2.65). Batches of `batch_size` pairs (the official
default 8) of one (query type, document type), left-padded. Nothing here reads lastrank's model code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

LOGIT_BIAS = 2.65  # the official modeling.py's constant, restated: the reference does not read lastrank's


def load_images(images):
    """The official modeling.py's load_images: a PIL image is used as given (the processor converts it), anything
    else (a path, a URL, base64 or a data URI, as a str) goes through transformers.image_utils.load_image, which
    applies the EXIF orientation and then .convert("RGB") (transparency dropped, not composited)."""
    from PIL import Image
    from transformers.image_utils import load_image

    return [image if isinstance(image, Image.Image) else load_image(image) for image in images]


def official_compute_score(folder: Path, dtype: torch.dtype = torch.float32, attn_implementation: str = "eager"):
    """-> compute_score(pairs, query_type, doc_type, max_length, max_query_length, max_doc_length, batch_size):
    the official relevance scores. eager attention by default (with a padding mask, the plain softmax path:
    the parity tests); "sdpa" is transformers' default (the benchmark)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    hf_config = Qwen2VLConfig(**{k: v for k, v in config.items() if not k.startswith("lastrank")})
    hf_config._attn_implementation = attn_implementation
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the benchmark's dtype: a 2B model is not built twice
    try:
        model = Qwen2VLForConditionalGeneration(hf_config).eval()
    finally:
        torch.set_default_dtype(default)
    model.lm_head = torch.nn.Identity()  # JinaVLForRanking: only the hidden states are wanted
    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(
        {("model.language_model." + k[6:] if k.startswith("model.") else "model." + k): v.to(dtype)
         for k, v in state.items() if not k.startswith("score.")}, strict=False)
    assert not unexpected and all(k.startswith("lm_head") for k in missing), (missing, unexpected)
    hidden = config["hidden_size"]
    head = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)).to(dtype)
    head.load_state_dict({k[len("score."):]: v.to(dtype) for k, v in state.items() if k.startswith("score.")})
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.padding_side = "left"  # JinaVLForRanking.padding_side
    processor = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=602112)

    def fmt(query, doc, query_type, doc_type):  # formatting_prompts_func
        q = "**Query**:\n<|vision_start|><|image_pad|><|vision_end|>" if query_type == "image" else f"**Query**:\n{query}"
        d = "**Document**:\n<|vision_start|><|image_pad|><|vision_end|>" if doc_type == "image" else f"**Document**:\n{doc}"
        return d + "\n" + q

    def one_batch(pairs, query_type, doc_type, max_length, max_doc_length):
        texts, images = [], []
        for q, d in pairs:
            if doc_type == "text":
                ids = tokenizer(d, truncation=True, max_length=max_doc_length)["input_ids"]
                if len(ids) >= max_doc_length:
                    d = tokenizer.decode(ids)
            texts.append(fmt(q, d, query_type, doc_type))
            images.append(load_images(([d] if doc_type == "image" else []) + ([q] if query_type == "image" else [])))
        flat = [im for ims in images for im in ims]
        pixel = processor(images=flat, return_tensors="pt") if flat else None
        # the processor's placeholder expansion: one <|image_pad|> per merged patch, images in order
        grids = iter(pixel["image_grid_thw"].tolist() if flat else [])
        expanded = []
        for t in texts:
            parts = t.split("<|image_pad|>")
            out = parts[0]
            for p in parts[1:]:
                n = int(np.prod(next(grids))) // 4
                out += "<|image_pad|>" * n + p
            expanded.append(out)
        batch = tokenizer(expanded, return_tensors="pt", padding=True, truncation=True, max_length=max_length - 1)
        n = batch["input_ids"].shape[0]
        ids = torch.cat([batch["input_ids"], torch.full((n, 1), 100)], dim=1)
        mask = torch.cat([batch["attention_mask"], torch.ones(n, 1, dtype=batch["attention_mask"].dtype)], dim=1)
        kw = dict(pixel_values=pixel["pixel_values"].to(dtype), image_grid_thw=pixel["image_grid_thw"]) if flat else {}
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == config["image_token_id"]).int(),
                        output_hidden_states=True, use_cache=False, **kw)
            logits = head(out.hidden_states[-1][:, -1]).squeeze(-1).float()
            return torch.sigmoid(logits - LOGIT_BIAS).tolist()

    def compute_score(pairs, query_type="text", doc_type="text", max_length=10240, max_query_length=512,
                      max_doc_length=None, batch_size=8):
        if max_doc_length is None:
            max_doc_length = max(max_length - max_query_length, max_query_length)
        scores = []
        for start in range(0, len(pairs), batch_size):
            scores += one_batch(pairs[start:start + batch_size], query_type, doc_type, max_length, max_doc_length)
        return scores

    return compute_score
