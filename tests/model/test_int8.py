"""The opt-in int8 path (model/int8.py; dtype "int8"): it runs for the encoder families, a passage scores
the same packed or alone (per-row activation scales), its drift from float32 stays bounded (tiny random models
and the real all-MiniLM-L6-v2), and every other family refuses it in one line at load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from lastrank import Reranker
from lastrank.errors import ModelNotAvailableError
from lastrank.eval.data import load_dataset
from lastrank.model.int8 import Int8Linear, available, check_int8, is_int8

pytestmark = pytest.mark.skipif(available() is not None, reason=f"no oneDNN quantized engine: {available()}")

DOCS = ["Green tea contains catechins, antioxidants studied for heart health.",
        "The Eiffel Tower is in Paris.",
        "Black tea is fermented; green tea is not.",
        "A short one.",
        "Drinking tea daily was linked to lower blood pressure in several trials, though effects were small.",
        "Cars need oil changes.",
        "Matcha is powdered green tea leaf, whisked into water rather than steeped."]
QUERY = "health benefits of green tea"


def trec_query(k: int = 100) -> tuple[str, list[str]]:
    ds = load_dataset("trec-dl-2019")
    qid = next(iter(ds.run))
    return ds.queries[qid], [ds.corpus[c.doc_id] for c in ds.run[qid][:k]]


def scores(reranker: Reranker, query: str, docs: list[str], key: str = "relevance_score") -> np.ndarray:
    out = np.empty(len(docs))
    for r in reranker.rerank(query, docs):
        out[r["index"]] = r[key]
    return out


def test_int8_linear_has_one_scale_per_output_channel():
    """A weight whose rows differ 1000x in size: per-channel scales keep the small rows' precision (one
    per-tensor scale would round them to zero)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 8)
    with torch.no_grad():
        lin.weight[:4] *= 1000
    q = Int8Linear(lin)
    x = torch.randn(32, 64)
    ref = lin(x)
    out = q(x)
    small = slice(4, 8)
    rel = (out[:, small] - ref[:, small]).abs().max() / ref[:, small].abs().max()
    assert rel < 0.05, rel
    w, scales = q.quantized_weight()
    assert w.dtype == torch.int8 and w.shape == (8, 64)
    # symmetric: the weights are the int8 values times their row's scale (no zero point)
    assert torch.allclose(w.float() * scales[:, None], lin.weight, rtol=0, atol=float(scales.max()) / 2 + 1e-6)
    assert scales.shape == (8,) and scales[:4].min() > 100 * scales[4:].max()


def test_int8_bert_runs_q_k_v_as_one_product_with_the_numbers_of_three():
    """The int8 path fuses a BERT layer's query, key and value into one product (BertSelfAttention.fuse_qkv):
    per-channel weights and per-row activation scales make it the three products' numbers, bit for bit (a
    per-tensor weight scale, set by the largest of the three, would not)."""
    from lastrank.model.bert import BertConfig, BertSelfAttention

    torch.manual_seed(0)
    attention = BertSelfAttention(BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64))
    with torch.no_grad():
        attention.value.weight *= 50  # a different size per part, as a per-tensor scale would feel
    three = [Int8Linear(getattr(attention, name)) for name in ("query", "key", "value")]
    x = torch.randn(9, 32)
    attention.fuse_qkv()
    assert attention.fused and not hasattr(attention, "query")
    assert torch.equal(Int8Linear(attention.qkv)(x), torch.cat([m(x) for m in three], dim=1))


@pytest.fixture(scope="module")
def tiny_bi_encoder(tmp_path_factory):
    from lastrank.checkpoints.st import make_st_checkpoint

    return make_st_checkpoint(tmp_path_factory.mktemp("st"), seed=3)


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    from lastrank.checkpoints.xlmr import make_xlmr_checkpoint

    return make_xlmr_checkpoint(tmp_path_factory.mktemp("xlmr") / "bge", "bge-reranker-v2-m3-tiny", seed=1)


@pytest.mark.parametrize("which", ["tiny_bi_encoder", "tiny_cross_encoder"])
def test_int8_runs_and_stays_near_float32(which, request):
    folder = request.getfixturevalue(which)
    r8 = Reranker(str(folder), dtype="int8")
    r32 = Reranker(str(folder), dtype="float32")
    assert r8.dtype == torch.int8 and is_int8(r8.backend.inner.model)
    assert not is_int8(r32.backend.inner.model)
    assert "int8" in repr(r8)
    key = "relevance_score"
    s8, s32 = scores(r8, QUERY, DOCS, key), scores(r32, QUERY, DOCS, key)
    assert np.abs(s8 - s32).max() < 0.02, np.abs(s8 - s32).max()
    assert not np.array_equal(s8, s32)  # it is really another path
    assert kendalltau(s8, s32).statistic >= 0.7


def test_a_passage_scores_the_same_alone_and_packed(tiny_bi_encoder, tiny_cross_encoder):
    """Activations are quantized per token row (model/int8.py), so a sequence's int8 output does not depend on
    what is packed with it: packed and one-sequence-per-forward agree to float rounding. (With one activation
    scale per call, the old rule, they differed by up to 4% of the logits' spread on a VNNI CPU, 12% on AVX2.)"""
    bi = Reranker(str(tiny_bi_encoder), dtype="int8").backend.inner
    seqs = bi.tokenizer.encode(DOCS, "", 64, "max_doc_length").ids
    packed = bi.embed(seqs, [0] * len(seqs))
    alone = np.concatenate([bi.embed([s], [0]) for s in seqs])
    assert np.abs(packed - alone).max() < 1e-5, np.abs(packed - alone).max()

    reranker = Reranker(str(tiny_cross_encoder), dtype="int8")
    ce = reranker.backend.inner
    request = ce_request(QUERY, DOCS)
    pairs = ce.encode_pairs(request, ce.limits(request)).sequences
    packed = ce.score_sequences(pairs, [0] * len(pairs))
    alone = np.concatenate([ce.score_sequences([p], [0]) for p in pairs])
    assert np.abs(packed - alone).max() < 1e-5 * max(1.0, np.abs(alone).max()), np.abs(packed - alone).max()
    # the same through the public API: each passage in a request of its own, and all in one request
    together = scores(reranker, QUERY, DOCS)
    each = np.array([scores(reranker, QUERY, [d])[0] for d in DOCS])
    assert np.abs(together - each).max() < 1e-5, np.abs(together - each).max()


@pytest.mark.skipif("fbgemm" not in torch.backends.quantized.supported_engines or not torch.backends.mkldnn.is_available(),
                    reason="needs both fbgemm and oneDNN")
def test_the_int8_engines_give_the_same_numbers(monkeypatch):
    """Without VNNI the product runs on oneDNN's qlinear_pointwise, fed u8 activations that quantize_per_tensor
    makes (faster on AVX2: docs/benchmarks.md, "int8 on AMD Zen 3"); fbgemm's op quantizes inside. The same grid
    and the same rounding give the same outputs bit for bit, and a row alone its packed output."""
    from lastrank.model import int8

    monkeypatch.setattr(int8, "cpu_capabilities", lambda: {"avx2": True})
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 40)
    x = torch.randn(300, 96) * 3
    u8 = Int8Linear(lin)
    monkeypatch.setattr(int8, "engine", lambda: "fbgemm")
    fbgemm = Int8Linear(lin)
    assert (u8.engine, fbgemm.engine) == ("onednn-u8", "fbgemm")
    out = u8(x)
    assert torch.equal(out, fbgemm(x))
    assert torch.equal(u8(x[7:8]), out[7:8])
    assert torch.equal(u8.quantized_weight()[0], fbgemm.quantized_weight()[0])


@pytest.mark.parametrize("vnni", [False, True])
def test_without_vnni_weights_use_7_bits_so_16_bit_sums_cannot_saturate(vnni, monkeypatch):
    """Without VNNI a u8 x s8 product sums pairs in 16 bits: 2 x 255 x 127 overflows it (measured on AVX2:
    errors of 0.5 on outputs of size ~1), 2 x 255 x 63 does not. So there the weights are 7-bit (|q| <= 63);
    with VNNI they keep 8. Either way the error stays a rounding error on this machine."""
    from lastrank.model import int8

    hardware_vnni = int8.has_vnni()
    monkeypatch.setattr(int8, "cpu_capabilities", lambda: {"avx512_vnni": vnni})
    torch.manual_seed(0)
    lin = torch.nn.Linear(384, 256)
    q = Int8Linear(lin)
    w, _ = q.quantized_weight()
    assert int(w.abs().max()) == (127 if vnni else 63)
    x = torch.randn(512, 384)
    err = (q(x) - lin(x)).abs()
    if not vnni or hardware_vnni:  # 8-bit weights on a CPU without VNNI can saturate: not this check's point
        assert err.mean() < 0.02 and err.max() < 0.1, (err.mean(), err.max())


def test_int8_says_in_one_line_where_this_cpu_has_no_vnni(tiny_bi_encoder, monkeypatch, tmp_path, capsys):
    """Without VNNI int8 runs with 7-bit weights (docs/benchmarks.md): the choice carries a one-line warning
    naming the missing instructions, which the CLI prints; with VNNI there is none."""
    from lastrank.cli import main
    from lastrank.model import int8

    monkeypatch.setattr(int8, "cpu_capabilities", lambda: {"avx2": True, "avx512_vnni": False})
    assert "no AVX-512 VNNI" in Reranker(str(tiny_bi_encoder), dtype="int8").backend.dtype_choice.warning
    assert int8.speed_note() is not None and "no AVX-512 VNNI or AMX (avx512_vnni" in int8.speed_note()
    docs = tmp_path / "docs.txt"
    docs.write_text("green tea\ncars\n")
    assert main(["rerank", "--model", str(tiny_bi_encoder), "--dtype", "int8", "--query", "tea",
                 "--documents", str(docs)]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "VNNI" in line]
    assert len(warned) == 1 and warned[0].startswith("lastrank: warning: dtype int8: this CPU has no AVX-512 VNNI or AMX"), warned

    # AVX-VNNI alone (no AVX-512): fbgemm has no kernels for it and sums in 16 bits there (int8.has_vnni)
    monkeypatch.setattr(int8, "cpu_capabilities", lambda: {"avx2": True, "avx_vnni": True})
    assert not int8.has_vnni() and int8.speed_note() is not None
    monkeypatch.setattr(int8, "cpu_capabilities", lambda: {"avx512_vnni": True})
    assert int8.speed_note() is None
    assert Reranker(str(tiny_bi_encoder), dtype="int8").backend.dtype_choice.warning is None


def ce_request(query, docs):
    from lastrank.types import RerankRequest

    return RerankRequest(query=query, documents=docs)


def test_real_minilm_int8_drift_on_a_trec_query():
    """The real all-MiniLM-L6-v2 on one TREC-DL-2019 query's 100 BM25 passages: int8 keeps the float32 order
    (Kendall tau) and top 10 up to a few swaps; the cosines move by about 0.01 (at most 0.024 measured with
    8-bit weights on a VNNI CPU, 0.032 with the 7-bit weights of a CPU without VNNI)."""
    query, passages = trec_query()
    s8 = scores(Reranker("minilm", dtype="int8"), query, passages)
    s32 = scores(Reranker("minilm", dtype="float32"), query, passages)
    tau = kendalltau(s8, s32).statistic
    top8, top32 = set(np.argsort(-s8)[:10]), set(np.argsort(-s32)[:10])
    print(f"\nMiniLM int8 vs float32, 100 passages: tau {tau:.4f}, max |d| {np.abs(s8 - s32).max():.4f}, "
          f"top-10 overlap {len(top8 & top32)}")
    assert tau >= 0.95
    assert len(top8 & top32) >= 9
    assert np.abs(s8 - s32).max() < 0.04  # measured 0.024 / 0.032 (docs/benchmarks.md, int8)


def test_other_families_refuse_int8_in_one_line(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(ModelNotAvailableError, match="int8 is implemented for the bi-encoder and cross-encoder"):
        Reranker(str(tiny_checkpoint), dtype="int8")
    from lastrank.cli import main

    docs = tmp_path / "docs.txt"
    docs.write_text("a\nb\n")
    assert main(["rerank", "--model", str(tiny_checkpoint), "--dtype", "int8", "--query", "q",
                 "--documents", str(docs)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lastrank: error: dtype int8 is implemented for")


def test_int8_refuses_a_decoder_bi_encoder_and_a_gpu(tmp_path):
    from lastrank.checkpoints.st import make_st_checkpoint

    folder = make_st_checkpoint(tmp_path / "qwen", backbone="qwen3", pooling="lasttoken")
    with pytest.raises(ModelNotAvailableError, match="int8 is implemented for BERT bi-encoders only"):
        Reranker(str(folder), dtype="int8")
    with pytest.raises(ModelNotAvailableError, match="CPU only"):
        check_int8(torch.device("cuda"))
