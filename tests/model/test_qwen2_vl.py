"""Qwen2-VL's vision side and jina-reranker-m0's model against transformers, in float32.

References: transformers' Qwen2VLImageProcessorPil (the processor without torchvision) for preprocessing;
Qwen2VLForConditionalGeneration, loaded with the tiny random m0 checkpoint's weights (renamed to its
layout), plus the official head (score.0 -> ReLU -> score.2, minus 2.65) for the model: the last token's
hidden state and the raw score within 1e-5, for text-only prompts and prompts with one or two images of
several sizes and aspect ratios. Also: M-RoPE in decoder.py reduces to plain RoPE for text.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lastrank.checkpoints.m0 import make_m0_checkpoint
from lastrank.model.jina_m0 import (IMAGE_TOKEN_ID, LOGIT_BIAS, SCORE_TOKEN_ID, VISION_END_ID, VISION_START_ID,
                                    load_jina_m0, mrope_positions)
from lastrank.model.qwen2_vl import ImageLimits, preprocess_image, smart_resize

ATOL = 1e-5
PIL = pytest.importorskip("PIL.Image")


def random_image(w: int, h: int, mode: str = "RGB", seed: int = 0):
    rng = np.random.default_rng(seed)
    return PIL.fromarray(rng.integers(0, 256, (h, w, 4 if mode == "RGBA" else 3), dtype=np.uint8)).convert(mode)


@pytest.mark.parametrize("w,h,mode", [(37, 53, "RGB"), (640, 480, "RGB"), (1500, 300, "RGBA"), (20, 20, "L"),
                                      (1000, 1000, "P"), (3000, 2000, "RGB")])
def test_preprocess_matches_transformers(w, h, mode):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    limits = ImageLimits()
    proc = Qwen2VLImageProcessorPil(min_pixels=limits.min_pixels, max_pixels=limits.max_pixels)
    image = random_image(w, h, mode, seed=w + h)
    ref = proc(images=[image], return_tensors="np")
    ours, grid = preprocess_image(image, limits)
    assert [list(grid)] == ref["image_grid_thw"].tolist()
    assert ours.dtype == np.float32 and ours.shape == ref["pixel_values"].shape
    np.testing.assert_array_equal(ours, ref["pixel_values"])


def test_smart_resize_bounds():
    assert smart_resize(10, 10, 28, 3136, 602112) == (56, 56)  # scaled up to min_pixels
    h, w = smart_resize(4000, 3000, 28, 3136, 602112)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 602112
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(1, 300, 28, 3136, 602112)


def test_mrope_positions_layout():
    # text(2) image(t=1, 4x6 patches -> 2x3 merged) text(2)
    ids = [1, 2] + [IMAGE_TOKEN_ID] * 6 + [3, 4]
    pos = mrope_positions(ids, [(1, 4, 6)], merge=2)
    assert pos[:, :2].tolist() == [[0, 1]] * 3
    assert pos[0, 2:8].tolist() == [2] * 6
    assert pos[1, 2:8].tolist() == [2, 2, 2, 3, 3, 3]
    assert pos[2, 2:8].tolist() == [2, 3, 4, 2, 3, 4]
    assert pos[:, 8:].tolist() == [[5, 6]] * 3  # resumes at start + max(t, rows, columns)
    with pytest.raises(ValueError):
        mrope_positions(ids, [(1, 4, 4)], merge=2)


def test_mrope_of_text_is_plain_rope():
    from lastrank.model.decoder import rope_cos_sin

    pos = torch.arange(50)
    plain = rope_cos_sin(pos, 16, 1e6, torch.float32)
    multi = rope_cos_sin(pos[None].expand(3, -1), 16, 1e6, torch.float32, (2, 3, 3))
    for a, b in zip(plain, multi):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from safetensors.torch import load_file
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    path = make_m0_checkpoint(tmp_path_factory.mktemp("m0"), "tiny", seed=3, dtype="float32")
    ours = load_jina_m0(path, torch.device("cpu"), torch.float32)
    config = json.loads((path / "config.json").read_text())
    hf_config = Qwen2VLConfig(**{k: v for k, v in config.items() if not k.startswith("lastrank")})
    hf_config._attn_implementation = "sdpa"
    hf = Qwen2VLForConditionalGeneration(hf_config).eval()
    state = load_file(str(path / "model.safetensors"))
    renamed = {("model.language_model." + k[6:] if k.startswith("model.") else "model." + k): v
               for k, v in state.items() if not k.startswith("score.")}
    missing, unexpected = hf.load_state_dict(renamed, strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # the official lm_head is Identity
    hidden = config["hidden_size"]
    head = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    head.load_state_dict({k[len("score."):]: v for k, v in state.items() if k.startswith("score.")})
    return ours, hf, head


def reference(hf, head, ids, images):
    """The official forward: Qwen2-VL's last hidden state at the last token, score head, minus the bias."""
    kw = {}
    if images:
        prepared = [preprocess_image(im) for im in images]
        kw = dict(pixel_values=torch.from_numpy(np.concatenate([p for p, _ in prepared])),
                  image_grid_thw=torch.tensor([g for _, g in prepared]))
    with torch.no_grad():
        out = hf(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                 mm_token_type_ids=torch.tensor([[int(t == IMAGE_TOKEN_ID) for t in ids]]),
                 output_hidden_states=True, use_cache=False, **kw)
        last = out.hidden_states[-1][0, -1]
        return last, float(head(last)[0] - LOGIT_BIAS)


def prompt(parts, images):
    """ids: text token ids and one vision block per image (placeholder expanded as the processor does)."""
    ids = []
    it = iter(images)
    for part in parts:
        if part == "image":
            _, (t, h, w) = preprocess_image(next(it))
            ids += [VISION_START_ID] + [IMAGE_TOKEN_ID] * (t * h * w // 4) + [VISION_END_ID]
        else:
            ids += part
    return ids + [SCORE_TOKEN_ID]


CASES = {
    "text": ([[334, 7524, 334, 510, 14990, 1879], [198, 334, 2859, 334, 510, 80]], []),
    "image document": ([[334, 7524, 334, 510], "image", [198, 334, 2859, 334, 510, 80]], [(90, 60)]),
    "tall image": ([[334, 7524, 334, 510], "image", [198, 80]], [(30, 200)]),
    "image query and document": ([[334, 7524], "image", [198, 334, 2859], "image", [510]], [(64, 64), (120, 45)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_model_matches_transformers(models, case):
    ours, hf, head = models
    parts, sizes = CASES[case]
    images = [random_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    ids = prompt(parts, images)
    ref_last, ref_raw = reference(hf, head, ids, images)
    prepared = [preprocess_image(im) for im in images]
    pixels = torch.from_numpy(np.concatenate([p for p, _ in prepared])) if prepared else None
    raw = float(ours.score_prompts([ids], [prepared])[0])
    assert abs(raw - ref_raw) < ATOL
    # the hidden state itself, so a small head cannot hide a difference
    device_ids = torch.tensor(ids)
    with torch.inference_mode():
        embeds = ours.model.embed_tokens(device_ids)
        if prepared:
            embeds[device_ids == IMAGE_TOKEN_ID] = ours.visual(pixels, [g for _, g in prepared])
        last = ours.model(None, inputs_embeds=embeds, positions=mrope_positions(ids, [g for _, g in prepared], 2))[-1]
    torch.testing.assert_close(last, ref_last, rtol=0, atol=ATOL)


def test_images_change_the_score(models):
    """Guard: two images of one size score differently (so the cases above can fail)."""
    ours, _, _ = models
    raws = []
    for seed in (0, 1):
        image = random_image(90, 60, seed=seed)
        raws.append(float(ours.score_prompts([prompt([[334, 7524], "image", [80]], [image])], [[preprocess_image(image)]])[0]))
    assert abs(raws[0] - raws[1]) > 100 * ATOL


def test_packed_equals_one_by_one(models):
    """Prompts of every kind in one forward (text only, an image, two images of different grids) score as each
    alone: attention, M-RoPE positions and vision attention stay within each prompt and image."""
    ours, _, _ = models
    images = [random_image(90, 60, seed=7), random_image(30, 200, seed=8), random_image(64, 64, seed=9)]
    seqs = [[334, 7524, 334, 510, 14990, SCORE_TOKEN_ID], prompt([[334, 7524], "image", [198, 80]], images[:1]),
            [198, 80, SCORE_TOKEN_ID], prompt([[334], "image", [198], "image", [510]], images[1:])]
    seq_images = [[], [preprocess_image(images[0])], [], [preprocess_image(im) for im in images[1:]]]
    packed = ours.score_prompts(seqs, seq_images)
    alone = [float(ours.score_prompts([s], [ims])[0]) for s, ims in zip(seqs, seq_images)]
    np.testing.assert_allclose(packed.numpy(), alone, rtol=0, atol=ATOL)
    assert np.ptp(alone) > 100 * ATOL  # the prompts really score differently
