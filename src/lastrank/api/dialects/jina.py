"""Jina `POST /v1/rerank` (and `/rerank` without `texts`), with Cohere v1's fields accepted on the same route.

Request: {model?, query, documents: [str | object], top_n?, return_documents? (default true, as Jina),
          rank_fields? and max_chunks_per_doc? (Cohere v1; max_chunks_per_doc is accepted and ignored:
          long documents are truncated to max_doc_length tokens instead of chunked),
          lastrank extensions: instruction?, return_embeddings?, max_doc_length?, max_query_length?}
Response: {id, object: "list", model, usage {prompt_tokens, total_tokens},
           results [{index, relevance_score, document? {"text": ...} or the object as sent, embedding?}],
           meta {api_version, billed_units {search_units}, tokens}}
One body serves Jina clients (which read `results`, `model`, `usage`) and cohere.Client v1 (which reads
`id`, `results`, `meta` and ignores the rest).
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import Field, StrictBool, StrictInt, StrictStr

from lastrank.api.dialects.base import (
    Document,
    NonNegativeInt,
    PositiveInt,
    ResponseInfo,
    Translated,
    WireModel,
    document_texts,
    echo_document,
    meta_block,
    usage_block,
)
from lastrank.types import RerankResult

NAME = "jina"


class Request(WireModel):
    model: Optional[StrictStr] = None
    query: StrictStr
    documents: list[Document]
    top_n: Optional[NonNegativeInt] = Field(None, description="results to return; null: all")
    return_documents: Optional[StrictBool] = Field(None, description="echo documents; null: true")
    rank_fields: Optional[list[StrictStr]] = Field(None, description="object fields to rank on (Cohere v1)")
    max_chunks_per_doc: Optional[StrictInt] = Field(None, description="accepted and ignored (Cohere v1)")
    instruction: Optional[StrictStr] = Field(None, description="a ranking instruction passed to the model")
    return_embeddings: Optional[StrictBool] = Field(None, description="return each document's embedding")
    max_doc_length: Optional[PositiveInt] = Field(None, description="tokens per document; null: 2048")
    max_query_length: Optional[PositiveInt] = Field(None, description="tokens of the query; null: 512")


def to_internal(body: Request) -> Translated:
    return Translated(
        query=body.query,
        documents=document_texts(body.documents, body.rank_fields),
        originals=body.documents,
        top_n=body.top_n,
        return_documents=True if body.return_documents is None else body.return_documents,
        return_embeddings=bool(body.return_embeddings),
        max_doc_length=body.max_doc_length,
        max_query_length=body.max_query_length,
        instruction=body.instruction,
        model=body.model,
    )


def from_internal(result: RerankResult, t: Translated, info: ResponseInfo) -> tuple[Any, dict]:
    results = []
    for r in result.results:
        item: dict[str, Any] = {"index": r.index, "relevance_score": r.relevance_score}
        if t.return_documents:
            item["document"] = echo_document(t.originals[r.index])
        if t.return_embeddings:
            item["embedding"] = r.embedding
        results.append(item)
    body = {
        "id": info.request_id,
        "object": "list",
        "model": info.model,
        "usage": usage_block(result),
        "results": results,
        "meta": meta_block(result, info, "1"),
    }
    return body, {}
