"""Jina `POST /v1/rerank` (and `/rerank` without `texts`), with Cohere v1's fields accepted on the same route.

Request: {model?, query: str | {"text": str} | {"image": str} | vLLM's {"content": [part]} (the input forms of
          base.py; an image is base64, a data URI or an allowed URL, for models whose capabilities say `images`
          (jina-reranker-m0): to any other model an image query or document is a 422; a query object in none of
          the forms, or any other type, is a 422), documents: [str | object; an image document in the same
          forms as the query; a bad document object is a 400], top_n?,
          return_documents? (default true, as Jina),
          rank_fields? and max_chunks_per_doc? (Cohere v1; max_chunks_per_doc: long documents are ranked in
          chunks of max_doc_length tokens, at most this many per document, as Cohere v1 does: it implies
          chunking "chunk" unless chunking says otherwise),
          lastrank extensions: instruction?, return_embeddings?, max_doc_length?, max_query_length?,
          score_threshold?, chunking? ("truncate" | "chunk"; null: the server's --chunking),
          chunk_overlap?, return_spans?}
Response: {id, object: "list", model, usage {prompt_tokens, total_tokens},
           results [{index, relevance_score, document? {"text": ...} or the object as sent, embedding?,
                     span? [start, end): with return_spans in chunk mode, the best chunk's characters}],
           meta {api_version, billed_units {search_units}, tokens, warnings [str]}}
One body serves Jina clients (which read `results`, `model`, `usage`) and cohere.Client v1 (which reads
`id`, `results`, `meta` and ignores the rest).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, StrictBool, StrictStr

from lastrank.api.dialects.base import (
    SCORE_THRESHOLD_DESCRIPTION,
    Document,
    NonNegativeInt,
    PositiveInt,
    Query,
    ResponseInfo,
    ScoreThreshold,
    Translated,
    WireModel,
    meta_block,
    result_items,
    split_inputs,
    usage_block,
    wire_options,
)
from lastrank.types import RerankOptions, RerankResult

NAME = "jina"

class Request(WireModel):
    model: Optional[StrictStr] = None
    query: Query
    documents: list[Document]
    top_n: Optional[NonNegativeInt] = Field(None, description="results to return; null: all")
    return_documents: Optional[StrictBool] = Field(None, description="echo documents; null: true")
    rank_fields: Optional[list[StrictStr]] = Field(None, description="object fields to rank on (Cohere v1)")
    max_chunks_per_doc: Optional[PositiveInt] = Field(
        None, description="Cohere v1: rank long documents in chunks, at most this many per document (implies "
                          "chunking \"chunk\" unless chunking is given)")
    instruction: Optional[StrictStr] = Field(None, description="a ranking instruction passed to the model")
    return_embeddings: Optional[StrictBool] = Field(None, description="return each document's embedding")
    max_doc_length: Optional[PositiveInt] = Field(
        None, description="tokens per document; null: the model's own limit (/v1/models max_doc_length)")
    max_query_length: Optional[PositiveInt] = Field(
        None, description="tokens of the query; null: the model's own limit (/v1/models max_query_length)")
    score_threshold: ScoreThreshold = Field(None, description=SCORE_THRESHOLD_DESCRIPTION)
    chunking: Optional[Literal["truncate", "chunk"]] = Field(
        None, description="lastrank extension: a document longer than max_doc_length tokens is cut there "
                          "(truncate) or ranked by its best window of that many tokens (chunk); null: the server "
                          "default")
    chunk_overlap: Optional[NonNegativeInt] = Field(
        None, description="lastrank extension, chunk mode: tokens shared by consecutive windows; null: a window / 8")
    return_spans: Optional[StrictBool] = Field(
        None, description="lastrank extension, chunk mode: each result's `span` [start, end) is its best window's "
                          "character offsets in the document")


def to_internal(body: Request, defaults: RerankOptions = RerankOptions()) -> Translated:
    query, texts, images = split_inputs(body.query, body.documents, body.rank_fields)
    return Translated(
        query=query,
        documents=texts,
        images=images or None,
        originals=body.documents,
        options=wire_options(body, defaults,
                             chunking=body.chunking or ("chunk" if body.max_chunks_per_doc is not None else None)),
        return_documents=True if body.return_documents is None else body.return_documents,
        model=body.model,
    )


def from_internal(result: RerankResult, t: Translated, info: ResponseInfo) -> tuple[Any, dict]:
    results = result_items(result, t)
    body = {
        "id": info.request_id,
        "object": "list",
        "model": info.model,
        "usage": usage_block(result),
        "results": results,
        "meta": meta_block(result, info, "1"),
    }
    return body, {}
