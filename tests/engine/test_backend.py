"""The backend seam: the one ranking rule, the one score rule, request validation, the registry's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lastrank.engine.backend import Capabilities, Scores, rank, sigmoid, truncation_refused
from lastrank.errors import InvalidRequestError, ModelNotAvailableError
from lastrank.types import RerankOptions, RerankRequest, Usage


def scores(values, raw=None):
    v = np.asarray(values, dtype=np.float32)
    return Scores(relevance=v, raw=v if raw is None else np.asarray(raw))


def test_rank_orders_like_the_official_argsort_including_ties():
    values = [0.1, 0.5, 0.5, -0.2, 0.5]
    request = RerankRequest(query="q", documents=list("abcde"))
    got = [r.index for r in rank(request, scores(values), Usage()).results]
    assert got == list(np.argsort(np.asarray(values, dtype=np.float32))[::-1])
    assert got[-1] == 3 and sorted(got[:3]) == [1, 2, 4]


def test_threshold_then_top_n_and_nan_is_dropped():
    values = [0.9, float("nan"), 0.4, 0.6, 0.3]
    request = RerankRequest(query="q", documents=list("abcde"),
                            options=RerankOptions(score_threshold=0.35, top_n=2))
    got = rank(request, scores(values), Usage()).results
    assert [r.index for r in got] == [0, 3]
    request = RerankRequest(query="q", documents=list("abcde"), options=RerankOptions(score_threshold=0.35))
    assert [r.index for r in rank(request, scores(values), Usage()).results] == [0, 3, 2]
    assert rank(RerankRequest(query="q", documents=list("abcde"), options=RerankOptions(top_n=0)), scores(values), Usage()).results == []


def test_rank_carries_raw_scores_documents_and_embeddings_only_when_asked():
    s = Scores(relevance=sigmoid(np.array([2.0, -1.0])), raw=np.array([2.0, -1.0]),
               embeddings=np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32))
    out = rank(RerankRequest(query="q", documents=["x", "y"]), s, Usage()).results
    assert [(r.index, r.document, r.raw_score, r.embedding) for r in out] == [(0, "x", 2.0, None), (1, "y", -1.0, None)]
    assert out[0].relevance_score == pytest.approx(1 / (1 + np.exp(-2.0)))
    out = rank(RerankRequest(query="q", documents=["x", "y"], options=RerankOptions(return_embeddings=True)), s, Usage()).results
    assert out[0].embedding == [1.0, 0.0]


def test_sigmoid_is_stable_for_large_logits():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        assert sigmoid(np.array([-1000.0, 0.0, 1000.0])).tolist() == [0.0, 0.5, 1.0]


def caps(score):
    return Capabilities(family="f", architecture="a", listwise=False, score=score, raw_score="r", instruction=False,
                        embedding_dim=None, context_length=512, max_doc_length=512, max_query_length=64)


def test_unit_score_maps_each_score_kind_into_0_1_monotonically():
    assert [caps("cosine").unit_score(x) for x in (-1.0, 0.0, 1.0)] == [0.0, 0.5, 1.0]
    assert [caps("sigmoid").unit_score(x) for x in (0.0, 0.25, 1.0)] == [0.0, 0.25, 1.0]  # never a second sigmoid


@pytest.mark.parametrize("kwargs, match", [
    (dict(score_threshold=float("nan")), "score_threshold must be a finite number"),
    (dict(score_threshold="0.5"), "score_threshold must be a finite number"),
    (dict(score_threshold=True), "score_threshold must be a finite number"),
    (dict(max_doc_length=0), "max_doc_length must be >= 1"),
])
def test_options_are_validated_when_built(kwargs, match):
    with pytest.raises(InvalidRequestError, match=match):
        RerankOptions(**kwargs)


def test_truncation_refused_names_the_documents_and_the_query():
    msg = truncation_refused(list(range(12)), True, 512, 64)
    assert "12 document(s) (indices 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more) exceed 512 tokens" in msg
    assert "the query exceeds 64 tokens" in msg and "truncate=true" in msg


def test_unknown_layout_names_what_was_found_and_what_is_supported(tmp_path):
    from lastrank.families import detect_family

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(ModelNotAvailableError) as e:
        detect_family(tmp_path)
    assert "architectures=['GPT2LMHeadModel']" in e.value.message and "model_type='gpt2'" in e.value.message
    assert "jina-v3: jinaai/jina-reranker-v3" in e.value.message


def test_registry_detects_jina_v3_and_truncate_false_fails_at_plan_time(tiny_reranker):
    from lastrank.families import detect_family

    assert detect_family(tiny_reranker.path) == "jina-v3"
    assert tiny_reranker.capabilities.family == "jina-v3" and tiny_reranker.capabilities.score == "cosine"
    backend = tiny_reranker.backend
    long_doc = "word " * 50
    with pytest.raises(InvalidRequestError, match=r"1 document\(s\) \(indices 1\) exceed 8 tokens"):
        backend.plan(RerankRequest(query="q", documents=["short", long_doc],
                                   options=RerankOptions(max_doc_length=8, truncate=False)))
    plan = backend.plan(RerankRequest(query="q", documents=["short", long_doc],
                                      options=RerankOptions(max_doc_length=8)))
    assert plan.usage.truncated_indices == [1] and plan.usage.truncated_documents == 1
