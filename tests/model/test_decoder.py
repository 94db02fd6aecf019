"""The one decoder (model/decoder.py) for both Qwen families, against transformers, in float32.

Qwen3 (q/k norms, no biases) is also covered end to end by test_modeling.py on the Jina checkpoints; here
both variants are built from a bare config with random weights (biases and norms not at their defaults), so
a bias or norm switched the wrong way changes the numbers. Then fusion.py's paths (fused projections with
biases, packing, a cached prefix, rows only) must equal the plain forward for the Qwen2 variant too.
"""

from __future__ import annotations

import pytest
import torch

from lastrank.model.config import QwenConfig
from lastrank.model.decoder import DecoderModel
from lastrank.model.attention import PrefixCache
from lastrank.model.fusion import fuse_projections

ATOL = 1e-5
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=1000, rope_theta=10000.0)


class Head(torch.nn.Module):
    """What fusion.fuse_projections expects: a module whose backbone is `.model`."""

    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.model = DecoderModel(cfg)


def random_weights(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def hf_backbone(cfg: QwenConfig, state: dict):
    if cfg.model_type == "qwen2":
        from transformers import Qwen2Config as Config, Qwen2Model as Model
    else:
        from transformers import Qwen3Config as Config, Qwen3Model as Model
    fields = {k: v for k, v in TINY.items()}
    config = Config(**fields, rms_norm_eps=cfg.rms_norm_eps, attn_implementation="sdpa")
    model = Model(config).eval()
    model.load_state_dict(state, strict=True)
    return model


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def pair(request):
    cfg = QwenConfig(model_type=request.param, attention_bias=request.param == "qwen2", **TINY)
    ours = Head(cfg)
    random_weights(ours, seed=7)
    ours.eval().requires_grad_(False)
    return cfg, ours, hf_backbone(cfg, ours.model.state_dict())


def test_config_switches():
    q2 = QwenConfig.from_dict({"model_type": "qwen2", **TINY})
    assert q2.attention_bias and not q2.qk_norm  # Qwen2's q/k/v biases are not a config.json field
    q3 = QwenConfig.from_dict({"model_type": "qwen3", **TINY})
    assert not q3.attention_bias and q3.qk_norm
    layer2, layer3 = DecoderModel(q2).layers[0].self_attn, DecoderModel(q3).layers[0].self_attn
    assert layer2.q_proj.bias is not None and layer2.o_proj.bias is None and layer2.q_norm is None
    assert layer3.q_proj.bias is None and layer3.q_norm is not None
    with pytest.raises(ValueError, match="attention_bias"):
        QwenConfig.from_dict({"model_type": "qwen3", "attention_bias": True, **TINY})
    with pytest.raises(ValueError, match="model_type"):
        QwenConfig.from_dict({"model_type": "llama", **TINY})
    assert QwenConfig.from_dict({"model_type": "qwen3", **{k: v for k, v in TINY.items() if k != "rope_theta"},
                                  "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}).rope_theta == 5e5
    with pytest.raises(ValueError, match="rope_type"):
        QwenConfig.from_dict({"model_type": "qwen3", "rope_parameters": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="sliding"):
        QwenConfig.from_dict({"model_type": "qwen2", "use_sliding_window": True, **TINY})


def test_plain_forward_matches_transformers(pair):
    cfg, ours, hf = pair
    ids = torch.randint(0, TINY["vocab_size"], (300,), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        got = ours.model(ids)
        want = hf(input_ids=ids[None]).last_hidden_state[0]
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_fast_paths_equal_plain_forward(pair):
    """Fused q/k/v (+ biases), packed sequences, a cached prefix and rows-only: the plain forward's numbers."""
    cfg, ours, _ = pair
    g = torch.Generator().manual_seed(2)
    a, b = (torch.randint(0, TINY["vocab_size"], (n,), generator=g) for n in (70, 45))
    head = torch.randint(0, TINY["vocab_size"], (20,), generator=g)
    a[:20], b[:20] = head, head
    with torch.inference_mode():
        plain_a, plain_b = ours.model(a), ours.model(b)
        fused = Head(cfg)
        fused.load_state_dict(ours.state_dict())
        fused.eval().requires_grad_(False)
        fuse_projections(fused)
        if cfg.attention_bias:
            assert fused.model.layers[0].self_attn.qkv_bias is not None
        torch.testing.assert_close(fused.model(a), plain_a, atol=ATOL, rtol=0)
        packed = fused.model(torch.cat([a, b]), [70, 45])
        torch.testing.assert_close(packed, torch.cat([plain_a, plain_b]), atol=ATOL, rtol=0)
        prefix = PrefixCache(head)
        fused.model(head, rows=torch.tensor([19]), on_kv=prefix.keep)
        rows = torch.tensor([0, 49, 50, 74])  # across both sequences, after the prefix
        got = fused.model(torch.cat([a[20:], b[20:]]), [50, 25], rows=rows, prefix=prefix)
        want = torch.cat([plain_a[20:], plain_b[20:]])[rows]
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
