"""lastrank's Qwen3 backbone vs transformers' Qwen3Model on the same random weights (float32).

lastrank's backbone (`Reranker.backend.model.model`, forward(input_ids [T]) -> [T, hidden] after the
final norm) must give the same final hidden states as `transformers.Qwen3Model(...).last_hidden_state`
(SDPA, the HF default) built from the checkpoint's config.json. Also checked on config variants
(plain MHA, MQA, head_dim != hidden/heads, another rope_theta / eps / depth), each with a full
rerank parity check against the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from support.reference_impl import assert_parity, cached_reference, load_reference_backbone

HIDDEN_ATOL = 1e-5


def _inputs(checkpoint_dir, n_random: int = 3000) -> dict[str, torch.Tensor]:
    """A real block prompt (markers, special tokens) and n_random random ids (RoPE at larger positions)."""
    ref = cached_reference(checkpoint_dir)
    docs = ["Green tea is rich in antioxidants.", "绿茶含有儿茶素。", "🍵 <|im_start|> tea", ""]
    (_, prompt_ids), = ref.block_prompts("What are the benefits of green tea?", docs)
    g = torch.Generator().manual_seed(1234)
    vocab = ref.config.vocab_size
    rand = torch.randint(0, vocab, (n_random,), generator=g)
    return {"prompt": torch.tensor(prompt_ids), f"random_{n_random}": rand, "single_token": torch.tensor([151671])}


def _lastrank_hidden(reranker, ids: torch.Tensor) -> torch.Tensor:
    backbone = reranker.backend.model.model
    p = next(backbone.parameters())
    with torch.no_grad():
        return backbone(ids.to(p.device)).float().cpu()


def _reference_hidden(backbone, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return backbone(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None], use_cache=False).last_hidden_state[0].float()


def _compare(reranker, checkpoint_dir, record_property, label: str, n_random: int = 3000):
    backbone, _ = load_reference_backbone(checkpoint_dir, torch.float32)
    worst = 0.0
    for name, ids in _inputs(checkpoint_dir, n_random).items():
        got = _lastrank_hidden(reranker, ids)
        want = _reference_hidden(backbone, ids)
        assert got.shape == want.shape, (name, tuple(got.shape), tuple(want.shape))
        diff = (got - want).abs().max().item()
        worst = max(worst, diff)
        print(f"\n[{label}] final hidden states, {name} ({ids.numel()} tokens): max |lastrank - transformers| = {diff:.3e}")
        assert diff <= HIDDEN_ATOL, f"[{label}] {name}: max abs diff {diff:.3e} > {HIDDEN_ATOL:g}"
    record_property(f"max_abs_hidden_diff_{label}", f"{worst:.3e}")
    return worst


def test_backbone_matches_transformers(tiny_reranker, tiny_checkpoint, record_property):
    _compare(tiny_reranker, tiny_checkpoint, record_property, "tiny")


VARIANTS = {
    "mha_kv_eq_heads": dict(num_attention_heads=4, num_key_value_heads=4),
    "mqa_kv_1": dict(num_attention_heads=4, num_key_value_heads=1),
    "head_dim_32": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32),
    "heads_8_kv_2_theta_1e4_eps_1e-5_3_layers": dict(
        num_attention_heads=8, num_key_value_heads=2, head_dim=8, rope_theta=10000.0, rms_norm_eps=1e-5, num_hidden_layers=3
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_backbone_variants(variant, make_tiny_checkpoint, record_property):
    from lastrank import Reranker

    path = make_tiny_checkpoint(seed=3, **VARIANTS[variant])
    r = Reranker(str(path), device="cpu", dtype="float32")
    _compare(r, path, record_property, variant, n_random=600)
    # ... and the whole pipeline on that variant.
    ref = cached_reference(path)
    docs = ["tea", "green tea leaves", "cars and roads", "", "绿茶", "tea <|embed_token|> tea"]
    assert_parity(r.rerank("green tea", docs, return_embeddings=True), ref.rerank("green tea", docs, return_embeddings=True), docs, embeddings=True)


def test_float32_checkpoint_on_disk(make_tiny_checkpoint):
    """A checkpoint stored in float32 (not bf16) loads with its exact weights."""
    from lastrank import Reranker

    path = make_tiny_checkpoint(seed=5, dtype="float32")
    r = Reranker(str(path), device="cpu", dtype="float32")
    ref = cached_reference(path)
    docs = ["a cup of tea", "engines", "sleep and tea", "music"]
    assert_parity(r.rerank("tea", docs), ref.rerank("tea", docs), docs)


def test_reference_hidden_states_last_is_post_norm(tiny_checkpoint):
    """Reference self-check (spec §5 step 2): the official code reads Qwen3ForCausalLM(...,
    output_hidden_states=True).hidden_states[-1]; in this transformers version that equals Qwen3Model's
    last_hidden_state (after the final norm), which the reference uses."""
    from safetensors.torch import load_file
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config.from_pretrained(str(tiny_checkpoint), attn_implementation="sdpa")
    lm = Qwen3ForCausalLM(config)
    sd = {k: v.float() for k, v in load_file(str(Path(tiny_checkpoint) / "model.safetensors")).items() if k.startswith("model.")}
    missing, unexpected = lm.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    lm.lm_head = torch.nn.Identity()  # as the official modeling.py does
    lm.eval()
    backbone, _ = load_reference_backbone(tiny_checkpoint)
    ids = torch.tensor([[151644, 8948, 198, 40, 1079, 151670, 198, 151671, 151645]])
    captured = {}

    def hook(module, args, output):
        captured["pre_norm"] = output[0] if isinstance(output, tuple) else output

    handle = backbone.layers[-1].register_forward_hook(hook)
    with torch.no_grad():
        out = lm(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, output_hidden_states=True)
        last = backbone(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).last_hidden_state
        handle.remove()
        assert len(out.hidden_states) == config.num_hidden_layers + 1
        assert torch.equal(out.hidden_states[-1], last)
        # ... and it is post-norm: the final norm applied to the last layer's output.
        assert torch.equal(backbone.norm(captured["pre_norm"]), last)
        assert not torch.allclose(captured["pre_norm"], last)
    assert np.isfinite(last.numpy()).all()
