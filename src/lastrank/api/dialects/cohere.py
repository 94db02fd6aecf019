"""Cohere v2 `POST /v2/rerank`. (Cohere v1 shares `/v1/rerank` with Jina: see jina.py.)

Request: {model?, query, documents: [str] (objects accepted too, with `text` or rank_fields),
          lastrank extension: the query and documents may also be images (multimodal models, e.g.
          jina-reranker-m0) in the input forms of base.py ({"image": base64 | data URI | URL} or vLLM's
          {"content": [{"type": "image_url", ...}]}); Cohere's SDK sends strings, raw HTTP clients send these,
          top_n?, max_tokens_per_doc? (-> max_doc_length: where a long document is truncated, as Cohere v2
          does, or the chunk window when the server's --chunking is chunk; null: the model's own default;
          Cohere's 4096 would change the ranking), priority? (accepted, ignored),
          return_documents? (default false; dropped from the v2 SDK but gateways still send it),
          rank_fields?, instruction?, max_query_length?, score_threshold? (lastrank extension)}
Response (Cohere v2 shape): {id, results [{index, relevance_score, document?}], meta {api_version
          {version: "2"}, billed_units {search_units}, tokens, warnings [str]}, plus model and usage (the SDK keeps
          unknown fields, so they cost nothing)}.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import Field, StrictBool, StrictInt, StrictStr

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

NAME = "cohere_v2"


class Request(WireModel):
    model: Optional[StrictStr] = None
    query: Query
    documents: list[Document]
    top_n: Optional[NonNegativeInt] = None
    max_tokens_per_doc: Optional[PositiveInt] = Field(
        None, description="tokens per document; null: the model's own limit (/v1/models max_doc_length)")
    priority: Optional[StrictInt] = Field(None, description="accepted and ignored")
    return_documents: Optional[StrictBool] = Field(None, description="echo documents; null: false")
    rank_fields: Optional[list[StrictStr]] = None
    instruction: Optional[StrictStr] = None
    max_query_length: Optional[PositiveInt] = None
    score_threshold: ScoreThreshold = Field(None, description=SCORE_THRESHOLD_DESCRIPTION)


def to_internal(body: Request, defaults: RerankOptions = RerankOptions()) -> Translated:
    query, texts, images = split_inputs(body.query, body.documents, body.rank_fields)
    return Translated(
        query=query,
        documents=texts,
        images=images or None,
        originals=body.documents,
        options=wire_options(body, defaults, max_doc_length=body.max_tokens_per_doc),
        return_documents=bool(body.return_documents),
        model=body.model,
    )


def from_internal(result: RerankResult, t: Translated, info: ResponseInfo) -> tuple[Any, dict]:
    results = result_items(result, t)
    body = {
        "id": info.request_id,
        "results": results,
        "meta": meta_block(result, info, "2"),
        "model": info.model,
        "usage": usage_block(result),
    }
    return body, {}
