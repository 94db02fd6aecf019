"""RerankOptions: frozen, validated once when built (and again by dataclasses.replace), normalised."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lastrank.errors import InvalidRequestError
from lastrank.types import RerankOptions, RerankRequest


def test_options_are_frozen_and_copies_are_validated():
    options = RerankOptions(top_n=3, chunking="chunk")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.top_n = 5
    assert dataclasses.replace(options, top_n=1).top_n == 1 and options.top_n == 3
    with pytest.raises(InvalidRequestError, match="chunk_overlap must be >= 0"):
        dataclasses.replace(options, chunk_overlap=-1)


@pytest.mark.parametrize("options, match", [
    (dict(top_n=-1), "top_n must be >= 0"),
    (dict(top_n=2.0), "top_n must be an integer"),
    (dict(max_query_length=0), "max_query_length must be >= 1"),
    (dict(instruction=b"x"), "instruction must be a string"),
    (dict(instruction="caf\udce9"), "instruction is not valid Unicode"),
    (dict(score_threshold=float("inf")), "score_threshold must be a finite number"),
    (dict(chunking="split"), "chunking must be one of 'truncate', 'chunk'"),
    (dict(max_chunks_per_doc=0), "max_chunks_per_doc must be >= 1"),
    (dict(return_embeddings="yes"), "return_embeddings must be true or false"),
    (dict(truncate=0), "truncate must be true or false"),
    (dict(return_spans=None), "return_spans must be true or false"),
])
def test_bad_options_are_invalid_requests(options, match):
    with pytest.raises(InvalidRequestError, match=match):
        RerankOptions(**options)


def test_numbers_are_normalised():
    options = RerankOptions(top_n=np.int64(2), chunk_overlap=np.int32(0), score_threshold=np.float32(0.5))
    assert (options.top_n, options.chunk_overlap, options.score_threshold) == (2, 0, 0.5)
    assert type(options.top_n) is int and type(options.chunk_overlap) is int and type(options.score_threshold) is float


def test_a_request_takes_only_an_options_object():
    assert RerankRequest(query="q", documents=["d"]).options == RerankOptions()
    with pytest.raises(InvalidRequestError, match="options must be a RerankOptions"):
        RerankRequest(query="q", documents=["d"], options={"top_n": 1})
