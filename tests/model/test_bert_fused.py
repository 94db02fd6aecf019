"""model/bert.py's `linear`: bfloat16 on the CPU runs the bias (and GELU) inside oneDNN's product; float32 stays
F.linear exactly (the reference path)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lastrank.model.bert import ACTIVATIONS, linear

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch build")


def _layer(seed=0, n_in=48, n_out=96):
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out), torch.randn(37, n_in)


def test_float32_is_f_linear_bit_for_bit():
    lin, x = _layer()
    assert torch.equal(linear(lin, x), F.linear(x, lin.weight, lin.bias))
    assert torch.equal(linear(lin, x, "gelu"), F.gelu(F.linear(x, lin.weight, lin.bias)))


@pytest.mark.parametrize("act", [None, "gelu", "gelu_new", "relu"])
def test_bfloat16_fused_matches_float32_within_bf16_rounding(act):
    lin, x = _layer(1)
    ref = F.linear(x, lin.weight, lin.bias)
    ref = ACTIVATIONS[act](ref) if act else ref
    lin16, x16 = nn.Linear(48, 96).to(torch.bfloat16), x.to(torch.bfloat16)
    lin16.load_state_dict({k: v.to(torch.bfloat16) for k, v in lin.state_dict().items()})
    out = linear(lin16, x16, act)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    unfused = F.linear(x16, lin16.weight, lin16.bias)
    unfused = ACTIVATIONS[act](unfused) if act else unfused
    # the fused GELU rounds once (on the float32 accumulator), the unfused twice: never further from float32
    err_fused = (out.float() - ref).abs().max()
    err_unfused = (unfused.float() - ref).abs().max()
    assert err_fused <= err_unfused + 1e-6
    assert err_fused <= 0.02 * ref.abs().max()
    if act is None:  # the product and bias alone: the same numbers as F.linear
        assert torch.equal(out, unfused)


def test_bfloat16_encoder_with_fused_kernels_stays_near_float32(tmp_path):
    from lastrank.model.bert import load_bert
    from lastrank.checkpoints.st import make_st_checkpoint

    folder = make_st_checkpoint(tmp_path / "st", seed=2)
    m32 = load_bert(folder, torch.device("cpu"), torch.float32)
    m16 = load_bert(folder, torch.device("cpu"), torch.bfloat16)
    ids = torch.randint(5, m32.config.vocab_size, (40,))
    with torch.inference_mode():
        a = m32(ids, [10, 25, 5])
        b = m16(ids, [10, 25, 5]).float()
    assert torch.isfinite(a).all()
    assert (a - b).abs().max() < 0.05 * a.abs().max()
