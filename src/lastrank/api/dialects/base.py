"""What every dialect shares: documents as strings or objects, the translated request, response facts.

A dialect is a module with:
    NAME                       "jina" | "cohere_v1" | "cohere_v2" | "tei"
    Request                    a pydantic model of the wire body (every optional field accepts null,
                               unknown fields are ignored)
    to_internal(body) -> Translated
    from_internal(result, translated, info) -> (json content, extra headers)

Dialects only translate. Validation against server limits, auth, rate limits, the scheduler, the ledger
and metrics all happen once, in api/handler.py.

Object documents and `rank_fields`: a document may be a string or an object. The text ranked for an
object is, with no `rank_fields`, its `text` field. With `rank_fields` [f1, f2, ...], the listed
fields the object has, in the order given: one field alone is ranked as its value; several are joined
one per line as `f1: value1\\nf2: value2` (the YAML-like form Cohere recommends for structured data).
Non-string values are written as JSON. An object with none of the fields is a 400. Objects are echoed
back exactly as given (all their fields) when documents are returned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from lastrank.engine.backend import Capabilities
from lastrank.errors import InvalidRequestError
from lastrank.types import RerankResult

PositiveInt = Annotated[StrictInt, Field(ge=1)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
# A JSON number (integer or not) that is finite: strings, booleans, NaN/Infinity (which Python's json module
# accepts) and integers too large for a float are 422s.
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]

SCORE_THRESHOLD_DESCRIPTION = (
    "lastrank extension: drop results whose relevance_score is below this (kept: score >= threshold), "
    "applied to the ranked list before top_n; null: no threshold")
ScoreThreshold = Optional[FiniteFloat]

Document = Union[StrictStr, dict[str, Any]]


class WireModel(BaseModel):
    # Unknown fields are accepted and ignored: every client sends something extra (Fern headers,
    # gateway fields, vLLM's request_id ...), and refusing them would break compatibility.
    model_config = ConfigDict(extra="ignore")


@dataclass
class Translated:
    """A dialect's request translated to engine terms, plus what its response needs."""

    query: str
    documents: list[str]  # the texts ranked
    originals: list[Any]  # as the client sent them (str or dict), for echo
    top_n: int | None = None
    return_documents: bool = False
    return_embeddings: bool = False
    max_doc_length: int | None = None  # None: the server default
    max_query_length: int | None = None
    instruction: str | None = None
    model: str | None = None
    score_threshold: float | None = None  # None: keep every result
    truncate: bool = True  # False: an input that would be truncated is a 400 (TEI truncate=false), before any work
    chunking: str | None = None  # "truncate" | "chunk" (engine/chunking.py); None: the server's --chunking
    chunk_overlap: int | None = None
    max_chunks_per_doc: int | None = None
    return_spans: bool = False  # chunk mode: each result's best window as `span` [start, end) characters
    options: dict = field(default_factory=dict)  # dialect-only response switches (e.g. TEI raw_scores)
    # image query / documents (Jina's {"image": ...} objects): "query" / document index -> base64 or data URI
    # string as sent; their `documents` entries (and query) are "". Decoded and checked in handler.to_request.
    images: dict | None = None


@dataclass
class ResponseInfo:
    """Facts the handler knows that every response format may show."""

    request_id: str
    model: str  # the served model name
    search_units: int
    capabilities: Capabilities  # the served model's score definition (unit_score for [0, 1] formats)
    warnings: list[str] = field(default_factory=list)  # shown as meta.warnings where the format has a meta


def document_texts(documents: list[Any], rank_fields: list[str] | None) -> list[str]:
    texts = []
    fields = [f for f in (rank_fields or []) if isinstance(f, str)] or None
    for i, doc in enumerate(documents):
        if isinstance(doc, str):
            texts.append(doc)
            continue
        if not isinstance(doc, dict):  # the schema already refuses this; kept for direct callers
            raise InvalidRequestError(f"documents[{i}] must be a string or an object")
        if fields is None:
            text = doc.get("text")
            if not isinstance(text, str):
                raise InvalidRequestError(
                    f"documents[{i}] is an object without a string 'text' field; add one or pass rank_fields")
            texts.append(text)
            continue
        present = [f for f in fields if f in doc and doc[f] is not None]
        if not present:
            raise InvalidRequestError(f"documents[{i}] has none of the rank_fields {fields}")
        values = [doc[f] if isinstance(doc[f], str) else json.dumps(doc[f], ensure_ascii=False) for f in present]
        if len(fields) == 1:
            texts.append(values[0])
        else:
            texts.append("\n".join(f"{f}: {v}" for f, v in zip(present, values)))
    return texts


def echo_document(original: Any) -> dict:
    """Documents come back as objects: {"text": ...} for a string, the object itself otherwise."""
    if isinstance(original, str):
        return {"text": original}
    return original


def usage_block(result: RerankResult) -> dict:
    tokens = result.usage.prompt_tokens
    return {"prompt_tokens": tokens, "total_tokens": tokens}


def meta_block(result: RerankResult, info: ResponseInfo, api_version: str) -> dict:
    return {
        "api_version": {"version": api_version},
        "billed_units": {"search_units": info.search_units},
        "tokens": {"input_tokens": result.usage.prompt_tokens, "output_tokens": 0},
        "warnings": list(info.warnings),  # Cohere's ApiMeta.warnings: list[str]; always present, [] when none
    }


def result_items(result: RerankResult, t: Translated) -> list[dict[str, Any]]:
    """`results` entries shared by the Jina and Cohere shapes: index, relevance_score, and the document
    and embedding when asked for."""
    items = []
    for r in result.results:
        item: dict[str, Any] = {"index": r.index, "relevance_score": r.relevance_score}
        if t.return_documents:
            item["document"] = echo_document(t.originals[r.index])
        if t.return_embeddings:
            item["embedding"] = r.embedding
        if r.span is not None:  # asked for (return_spans) and chunk mode
            item["span"] = list(r.span)
        items.append(item)
    return items
