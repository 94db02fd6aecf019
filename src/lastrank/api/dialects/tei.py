"""Hugging Face TEI `POST /rerank` (selected when the body has `texts`).

Request: {query, texts: [str], truncate? (null/true: truncate to max_doc_length tokens, as TEI's
          --auto-truncate default; false: a text that would be truncated is a 400),
          truncation_direction? ("right"/"Right"; "left" is refused: the model's reference truncation
          keeps the start), raw_scores? (default false), return_text? (default false),
          lastrank extensions: model?, instruction?, and images: the query and each entry of `texts` may be
          any input form of base.py (a string, {"text": ...}, {"image": base64 | data URI | URL}, vLLM's
          {"content": [part]}), images for multimodal models (jina-reranker-m0) only}
Response: a bare array, best first: [{index, score, text?}]; accounting in x-compute-* headers.
`return_text` gives the text ranked (a string, as TEI's `text` always is); an image entry has no `text`.

Why images here too: `/rerank` is one route for the TEI and Jina bodies (as llama.cpp), and one set of input
forms on every route is simpler to use and to document than a list of which route takes what. TEI's own clients
send strings, so nothing changes for them.

Scores: `raw_scores: true` returns the model's raw score (a classifier's logit; the cosine itself for
cosine models); otherwise the relevance score mapped to [0, 1] by the served model's declared score rule
(Capabilities.unit_score: sigmoid scores as they are, cosines as (1 + cosine) / 2), as TEI's non-raw scores
are in [0, 1]. Both are monotonic in the relevance score, so the order is the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from pydantic import Field, StrictBool, StrictStr

from lastrank.api.dialects.base import Document, Query, ResponseInfo, Translated, WireModel, split_inputs, wire_options
from lastrank.errors import InvalidRequestError
from lastrank.types import RerankOptions, RerankResult

NAME = "tei"


class Request(WireModel):
    query: Query
    texts: list[Document]
    truncate: Optional[StrictBool] = None
    truncation_direction: Optional[Literal["right", "Right", "left", "Left"]] = None
    raw_scores: Optional[StrictBool] = None
    return_text: Optional[StrictBool] = None
    model: Optional[StrictStr] = Field(None, description="lastrank extension; null: the served model")
    instruction: Optional[StrictStr] = Field(None, description="lastrank extension")


@dataclass(frozen=True)
class Options:
    """TEI's own response switches (Translated.dialect_options)."""

    raw_scores: bool = False
    return_text: bool = False


def to_internal(body: Request, defaults: RerankOptions = RerankOptions()) -> Translated:
    if (body.truncation_direction or "right").lower() == "left":
        raise InvalidRequestError("truncation_direction 'left' is not supported; this model truncates on the right")
    query, texts, images = split_inputs(body.query, body.texts, field_name="texts")
    return Translated(
        query=query,
        documents=texts,
        images=images or None,
        documents_field="texts",
        originals=list(body.texts),
        options=wire_options(body, defaults),  # truncate (null: true), instruction
        model=body.model,
        dialect_options=Options(raw_scores=bool(body.raw_scores), return_text=bool(body.return_text)),
    )


def from_internal(result: RerankResult, t: Translated, info: ResponseInfo) -> tuple[Any, dict]:
    raw = t.dialect_options.raw_scores
    items = []
    for r in result.results:
        item: dict[str, Any] = {"index": r.index}
        if t.dialect_options.return_text and r.index not in (t.images or {}):
            item["text"] = t.documents[r.index]
        if raw:
            item["score"] = r.raw_score if r.raw_score is not None else r.relevance_score
        else:
            item["score"] = info.capabilities.unit_score(r.relevance_score)
        items.append(item)
    headers = {
        "x-compute-type": "lastrank",
        "x-compute-tokens": str(result.usage.prompt_tokens),
        "x-compute-characters": str(sum(len(d) for d in t.documents) + len(t.query)),
        "x-model": info.model,
    }
    return items, headers
