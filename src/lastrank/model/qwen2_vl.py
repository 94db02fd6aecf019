"""Qwen2-VL's vision side: image preprocessing (the official processor's steps) and the vision encoder.

Preprocessing (`preprocess_image`), as transformers' Qwen2VLImageProcessor (PIL backend) does it, step by step:
  1. RGB: an image with transparency is composited onto white, anything else converted to RGB (an encoded
     image is RGB already: lastrank/images.py decodes it as the official load_image does);
  2. `smart_resize`: height and width rounded to multiples of patch_size * merge_size (28), then scaled
     (keeping the aspect ratio) into [min_pixels, max_pixels]; PIL bicubic resize to that size;
  3. rescale by 1/255 (in float64, then float32), normalise with the OpenAI CLIP mean/std (float32);
  4. patchify: the image is repeated temporal_patch_size (2) times (a still image is a 2-frame clip) and cut
     into patch_size x patch_size patches, ordered by merge window (the merge_size x merge_size patches the
     merger joins are consecutive), each flattened as [channel, time, row, column]:
     pixel_values [grid_h * grid_w, 3 * 2 * 14 * 14], grid_thw (1, grid_h, grid_w).

The encoder (`VisionTransformer`, transformers' Qwen2VisionTransformerPretrainedModel): module names mirror
the checkpoint's (`visual.patch_embed.proj`, `visual.blocks.{i}.attn.qkv`, `visual.merger.mlp.0`, ...):
  - patch_embed.proj: Conv3d over (temporal_patch_size, patch, patch), no bias -> [N, embed_dim];
  - blocks: pre-LayerNorm (eps 1e-6) ViT blocks; attention is bidirectional within each image (each frame)
    with 2-D rotary positions: the first half of the head's rotary angles come from the patch's row, the
    second half from its column (frequencies over head_dim / 2), applied in float32; MLP fc1 -> quick_gelu
    -> fc2;
  - merger: LayerNorm (`ln_q`), then each merge window's 4 patch vectors concatenated -> mlp.0 -> GELU ->
    mlp.2 -> the language model's hidden size: one vector per image token (<|image_pad|>) of the prompt.
Shapes carry no batch dimension: the patches of several images are concatenated, grid_thw says where each
image's patches are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lastrank.images import to_rgb  # step 1 (torch-free, so lastrank.Client sends what the model reads)
from lastrank.model.attention import rotate_half

# The OpenAI CLIP normalisation the processor uses.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class VisionConfig:
    """config.json's `vision_config` (Qwen2-VL-2B's values as defaults)."""

    depth: int = 32
    embed_dim: int = 1280
    hidden_size: int = 1536  # the language model's hidden size: what the merger outputs
    hidden_act: str = "quick_gelu"
    mlp_ratio: float = 4
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    rope_theta: float = 10000.0

    def __post_init__(self):
        if self.hidden_act != "quick_gelu":
            raise ValueError(f"unsupported vision hidden_act {self.hidden_act!r} (Qwen2-VL uses quick_gelu)")
        if self.embed_dim % self.num_heads or (self.embed_dim // self.num_heads) % 4:
            raise ValueError("embed_dim / num_heads must be a multiple of 4 (2-D rotary positions)")

    @classmethod
    def from_dict(cls, d: dict) -> "VisionConfig":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known and v is not None}
        if "in_chans" in d and "in_channels" not in d:  # how the original Qwen2-VL config.json spells it
            kw["in_channels"] = d["in_chans"]
        rope = d.get("rope_parameters")
        if isinstance(rope, dict) and "rope_theta" in rope:
            kw["rope_theta"] = rope["rope_theta"]
        return cls(**kw)


# ----------------------------------------------------------------------------------------------------------
# Preprocessing


@dataclass(frozen=True)
class ImageLimits:
    """The processor's settings that decide the grid. jina-reranker-m0's compute_score builds its processor
    with min_pixels=3136, max_pixels=602112 (768 image tokens at most), overriding the folder's defaults."""

    min_pixels: int = 3136
    max_pixels: int = 602112
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2

    @classmethod
    def of(cls, vision: VisionConfig) -> "ImageLimits":
        """These pixel bounds with a model's own patch geometry (its config.json vision_config)."""
        return cls(patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
                   temporal_patch_size=vision.temporal_patch_size)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width): multiples of `factor` closest to the image's, scaled into [min_pixels, max_pixels] keeping
    the aspect ratio (the processor's rule; an aspect ratio over 200 is refused there and here)."""
    if min(height, width) < 1:
        raise ValueError(f"an image must have at least one pixel each way, got {width}x{height}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image aspect ratio must be at most 200, got {width}x{height}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def image_grid(width: int, height: int, limits: ImageLimits = ImageLimits()) -> tuple[int, int, int]:
    """(t, h, w) patch grid an image of this size becomes; its prompt holds t*h*w / merge_size**2 image tokens."""
    factor = limits.patch_size * limits.merge_size
    h, w = smart_resize(height, width, factor, limits.min_pixels, limits.max_pixels)
    return 1, h // limits.patch_size, w // limits.patch_size


IMAGE_PAD = "<|image_pad|>"
IMAGE_PROMPT = "<|vision_start|>" + IMAGE_PAD + "<|vision_end|>"  # an image's place in a prompt


def process_image(image, limits: ImageLimits = ImageLimits()) -> tuple[str, int, tuple[np.ndarray, tuple[int, int, int]]]:
    """What the Qwen2-VL processor makes of one image of a prompt: (its prompt text, IMAGE_PROMPT with
    <|image_pad|> repeated once per merged patch of its grid; that many image tokens; (pixel_values, grid_thw))."""
    pixels, grid = preprocess_image(image, limits)
    n = grid[0] * grid[1] * grid[2] // limits.merge_size ** 2
    return IMAGE_PROMPT.replace(IMAGE_PAD, IMAGE_PAD * n), n, (pixels, grid)


def preprocess_image(image, limits: ImageLimits = ImageLimits()) -> tuple[np.ndarray, tuple[int, int, int]]:
    """PIL image -> (pixel_values float32 [grid_h * grid_w, C * T * P * P], grid_thw (1, grid_h, grid_w))."""
    from PIL import Image

    rgb = to_rgb(image)
    _, gh, gw = image_grid(rgb.width, rgb.height, limits)
    P, M, T = limits.patch_size, limits.merge_size, limits.temporal_patch_size
    if rgb.size != (gw * P, gh * P):
        rgb = rgb.resize((gw * P, gh * P), resample=Image.Resampling.BICUBIC)
    x = (np.asarray(rgb).astype(np.float64) * (1 / 255)).astype(np.float32)  # [H, W, C]
    x = (x - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    C = x.shape[-1]
    # [H, W, C] -> rows (gh/M, M, P) and columns (gw/M, M, P) -> (gh/M, gw/M, M, M, C, P, P): merge-window order
    x = x.reshape(gh // M, M, P, gw // M, M, P, C).transpose(0, 3, 1, 4, 6, 2, 5)
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], T, P, P))  # the still image as T equal frames
    return np.ascontiguousarray(x.reshape(gh * gw, C * T * P * P)), (1, gh, gw)


# ----------------------------------------------------------------------------------------------------------
# The encoder


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def vision_positions(grid_thw: list[tuple[int, int, int]], merge: int, device=None) -> torch.Tensor:
    """(row, column) of every patch, [N, 2], in the patches' order (merge windows consecutive; frames repeat)."""
    out = []
    for t, h, w in grid_thw:
        rows = torch.arange(h, device=device)[:, None].expand(h, w)
        cols = torch.arange(w, device=device)[None, :].expand(h, w)
        block = (h // merge, merge, w // merge, merge)
        pos = torch.stack([rows.reshape(block).transpose(1, 2).flatten(),
                           cols.reshape(block).transpose(1, 2).flatten()], dim=-1)
        out.append(pos.repeat(t, 1))
    return torch.cat(out)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        k = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, cfg.embed_dim, kernel_size=k, stride=k, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        x = pixel_values.view(-1, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size)
        return self.proj(x.to(self.proj.weight.dtype)).view(-1, c.embed_dim)


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=True)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seq_lens: list[int]) -> torch.Tensor:
        N = x.shape[0]
        q, k, v = self.qkv(x).reshape(N, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)  # [N, heads, d]
        # Rotary positions in float32, cast back (as the reference does, whatever the model dtype).
        c, s = cos[:, None].float(), sin[:, None].float()
        q = (q.float() * c + rotate_half(q.float()) * s).to(v.dtype)
        k = (k.float() * c + rotate_half(k.float()) * s).to(v.dtype)
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))  # [heads, N, d]
        # Each image (frame) attends within itself only.
        out = torch.cat([F.scaled_dot_product_attention(qi[None], ki[None], vi[None])[0]
                         for qi, ki, vi in zip(q.split(seq_lens, 1), k.split(seq_lens, 1), v.split(seq_lens, 1))], 1)
        return self.proj(out.transpose(0, 1).reshape(N, -1))


class VisionMlp(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        hidden = int(cfg.embed_dim * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.attn = VisionAttention(cfg)
        self.mlp = VisionMlp(cfg)

    def forward(self, x, cos, sin, seq_lens):
        x = x + self.attn(self.norm1(x), cos, sin, seq_lens)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.window_dim = cfg.embed_dim * cfg.spatial_merge_size ** 2
        self.ln_q = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(self.window_dim, self.window_dim), nn.GELU(),
                                 nn.Linear(self.window_dim, cfg.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.window_dim))


class VisionTransformer(nn.Module):
    """pixel_values [N, C*T*P*P] + grid_thw -> image token vectors [N / merge**2, hidden_size]."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg)

    def rotary(self, grid_thw: list[tuple[int, int, int]], device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [N, head_dim], float32: half the angles from the row, half from the column."""
        cfg = self.config
        dim = cfg.embed_dim // cfg.num_heads // 2
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim))
        freqs = vision_positions(grid_thw, cfg.spatial_merge_size, device)[..., None].float() * inv_freq  # [N, 2, d/4]
        freqs = freqs.flatten(1)  # [N, dim/2]: rows' angles, then columns'
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    def forward(self, pixel_values: torch.Tensor, grid_thw: list[tuple[int, int, int]]) -> torch.Tensor:
        grid_thw = [tuple(int(v) for v in g) for g in grid_thw]
        x = self.patch_embed(pixel_values)
        if x.shape[0] != sum(t * h * w for t, h, w in grid_thw):
            raise ValueError(f"{x.shape[0]} patches for grids {grid_thw}")
        cos, sin = self.rotary(grid_thw, x.device)
        seq_lens = [h * w for t, h, w in grid_thw for _ in range(t)]
        for block in self.blocks:
            x = block(x, cos, sin, seq_lens)
        return self.merger(x)
