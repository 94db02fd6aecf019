"""jina-reranker-m0's model: Qwen2-VL (vision encoder + Qwen2 decoder with M-RoPE) and the score head.

As the official modeling.py (`JinaVLForRanking`, a Qwen2VLForConditionalGeneration with lm_head = Identity):
  - the prompt's <|image_pad|> tokens are replaced by the vision encoder's output vectors (model/qwen2_vl.py),
    one per image token, images in prompt order;
  - positions are Qwen2-VL's multimodal rotary positions (`mrope_positions`): three streams (t, h, w); text
    tokens advance all three by one; an image's tokens sit at start + (t, row, column) of its merged grid,
    and the text after it resumes at start + max(t, rows, columns);
  - the score is read at the last token (the official code appends token id 100 to every prompt and pads on
    the left, so "last" is that appended token): hidden -> score.0 Linear(H, H) -> ReLU -> score.2
    Linear(H, 1) = logit; the official relevance is sigmoid(logit - 2.65) (LOGIT_BIAS; vLLM's jina_vl.py
    subtracts the same 2.65 and applies the sigmoid). `raw_score` returns logit - 2.65, so the engine's one
    sigmoid (engine/backend.py) gives the official score.

Checkpoint names: `model.*` (the decoder, names as model/decoder.py), `visual.*` (the vision encoder),
`score.0.*` / `score.2.*`, as the published checkpoint (transformers 4.x layout) has them; the transformers 5
layout (`model.language_model.*`, `model.visual.*`) is read too. No LM head (the official one is Identity).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lastrank.errors import ModelNotAvailableError
from lastrank.model.config import QwenConfig
from lastrank.model.decoder import DecoderModel
from lastrank.model.qwen2_vl import VisionConfig, VisionTransformer
from lastrank.model.weights import checkpoint_files, read_safetensors, strict_load, weights_file

LOGIT_BIAS = 2.65  # official modeling.py and vLLM's jina_vl.py
SCORE_TOKEN_ID = 100  # appended to every prompt by the official compute_score / forward
IMAGE_TOKEN_ID = 151655  # <|image_pad|>
VISION_START_ID = 151652  # <|vision_start|>
VISION_END_ID = 151653  # <|vision_end|>
MROPE_SECTION = (16, 24, 24)  # Qwen2-VL's default (rope_scaling.mrope_section)

# One image, preprocessed (model/qwen2_vl.py preprocess_image): pixel_values [patches, C*T*P*P] and its grid (t, h, w)
Image = tuple[torch.Tensor | np.ndarray, tuple[int, int, int]]


def mrope_positions(ids: list[int], grids: list[tuple[int, int, int]], merge: int,
                    image_token_id: int = IMAGE_TOKEN_ID) -> torch.Tensor:
    """[3, T] positions of one unpadded sequence (transformers' Qwen2VLModel.get_rope_index for one row).
    Each run of consecutive image tokens is the next image of `grids`; its length must be t*h*w / merge**2."""
    streams: list[torch.Tensor] = []
    pos, i, image = 0, 0, 0
    T = len(ids)
    while i < T:
        j = i
        is_image = ids[i] == image_token_id
        while j < T and (ids[j] == image_token_id) == is_image:
            j += 1
        if not is_image:
            streams.append(torch.arange(pos, pos + j - i).expand(3, -1))
            pos += j - i
        else:
            if image >= len(grids):
                raise ValueError("more image-token runs in the sequence than images")
            t, h, w = grids[image]
            h, w = h // merge, w // merge
            if t * h * w != j - i:
                raise ValueError(f"image {image}: {j - i} image tokens for a {t}x{h}x{w} merged grid")
            tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
            streams.append(torch.stack([tt.flatten(), hh.flatten(), ww.flatten()]) + pos)
            pos += max(t, h, w)
            image += 1
        i = j
    if image != len(grids):
        raise ValueError(f"{len(grids)} images but {image} image-token runs in the sequence")
    return torch.cat(streams, dim=1) if streams else torch.zeros(3, 0, dtype=torch.long)


class JinaM0ForRanking(nn.Module):
    def __init__(self, cfg: QwenConfig, vision: VisionConfig, mrope_section: tuple[int, ...] = MROPE_SECTION,
                 image_token_id: int = IMAGE_TOKEN_ID):
        super().__init__()
        if vision.hidden_size != cfg.hidden_size:
            raise ValueError(f"vision_config.hidden_size {vision.hidden_size} != the decoder's {cfg.hidden_size}")
        self.config = cfg
        self.vision_config = vision
        self.image_token_id = image_token_id
        self.model = DecoderModel(cfg)
        self.model.mrope_section = tuple(mrope_section)
        self.visual = VisionTransformer(vision)
        h = cfg.hidden_size
        self.score = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))

    @property
    def dtype(self) -> torch.dtype:
        return self.score[0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.score[0].weight.device

    def raw_score(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """[n, hidden] -> logit - LOGIT_BIAS [n], float32 (the head in the model dtype, the bias in float32)."""
        return self.score(last_hidden).float()[:, 0] - LOGIT_BIAS

    @torch.inference_mode()
    def score_prompts(self, sequences: list[list[int]], images: list[list[Image]] | None = None) -> torch.Tensor:
        """Prompts (each ending with the score token) and each prompt's images in prompt order -> logit -
        LOGIT_BIAS per prompt, [n] float32, in one forward: the prompts packed without padding (attention
        within each, each with its own M-RoPE positions, the last layer at each last row only), every image
        of every prompt through one vision-encoder call (attention within each image), its vectors put at
        its <|image_pad|> tokens. How many prompts share a forward is the caller's choice
        (families/jina_m0.py), so memory stays bounded."""
        images = images if images is not None else [[] for _ in sequences]
        if len(images) != len(sequences):
            raise ValueError(f"{len(images)} image lists for {len(sequences)} prompts")
        device = self.device
        merge = self.vision_config.spatial_merge_size
        input_ids = torch.tensor([t for s in sequences for t in s], dtype=torch.long, device=device)
        embeds = self.model.embed_tokens(input_ids)
        mask = input_ids == self.image_token_id
        flat = [im for ims in images for im in ims]
        if flat:
            pixels = torch.cat([torch.as_tensor(p) for p, _ in flat]).to(device=device, dtype=self.dtype)
            features = self.visual(pixels, [g for _, g in flat]).to(embeds.dtype)
            if int(mask.sum()) != features.shape[0]:
                raise ValueError(f"{int(mask.sum())} image tokens but {features.shape[0]} image vectors")
            embeds[mask] = features
        elif bool(mask.any()):
            raise ValueError("image tokens in a prompt without images")
        positions = torch.cat([mrope_positions(s, [g for _, g in ims], merge, self.image_token_id)
                               for s, ims in zip(sequences, images)], dim=1).to(device)
        lens = [len(s) for s in sequences]
        rows = torch.tensor(lens, device=device).cumsum(0) - 1
        hidden = self.model(None, inputs_embeds=embeds, positions=positions, seq_lens=lens, rows=rows)
        return self.raw_score(hidden)


def m0_configs(config: dict) -> tuple[QwenConfig, VisionConfig, tuple[int, ...]]:
    """config.json (flat, as the published checkpoint; or transformers 5's text_config) -> the three configs."""
    text = dict(config.get("text_config") or config)
    rope = text.pop("rope_scaling", None) or text.pop("rope_parameters", None) or {}
    if rope and rope.get("type", rope.get("rope_type")) not in ("mrope", "default"):
        raise ValueError(f"rope type {rope.get('type', rope.get('rope_type'))!r}; Qwen2-VL uses mrope")
    section = tuple(rope.get("mrope_section") or MROPE_SECTION)
    if "rope_theta" not in text and "rope_theta" in rope:
        text["rope_theta"] = rope["rope_theta"]
    text.update(model_type="qwen2", tie_word_embeddings=False, use_sliding_window=False)
    cfg = QwenConfig.from_dict(text)
    vision = VisionConfig.from_dict(config.get("vision_config") or {})
    return cfg, vision, section


def checkpoint_name(name: str) -> str | None:
    """A safetensors key -> this module's name; None for keys not used (an LM head)."""
    if name.startswith("lm_head."):
        return None
    for new, old in (("model.language_model.", "model."), ("model.visual.", "visual.")):
        if name.startswith(new):
            return old + name[len(new):]
    return name


def load_jina_m0(path: Path, device: torch.device, dtype: torch.dtype) -> JinaM0ForRanking:
    """Strict load of a jina-reranker-m0 folder (config.json + model.safetensors or shards)."""
    config = json.loads((path / "config.json").read_text())
    try:
        cfg, vision, section = m0_configs(config)
    except (TypeError, ValueError) as e:
        raise ModelNotAvailableError(f"{path / 'config.json'}: {e}") from e
    files = checkpoint_files(path)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        for k, v in read_safetensors(file, dtype).items():
            name = checkpoint_name(k)
            if name is not None:
                state[name] = v
    return strict_load(lambda: JinaM0ForRanking(cfg, vision, section, config.get("image_token_id", IMAGE_TOKEN_ID)),
                       state, device, weights_file(files))
