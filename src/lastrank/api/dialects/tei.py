"""Hugging Face TEI `POST /rerank` (selected when the body has `texts`).

Request: {query, texts: [str], truncate? (null/true: truncate to max_doc_length tokens, as TEI's
          --auto-truncate default; false: a text that would be truncated is a 400),
          truncation_direction? ("right"/"Right"; "left" is refused: the model's reference truncation
          keeps the start), raw_scores? (default false), return_text? (default false),
          lastrank extensions: model?, instruction?}
Response: a bare array, best first: [{index, score, text?}]; accounting in x-compute-* headers.

Scores: `raw_scores: true` returns the model's raw score (a classifier's logit; the cosine itself for
cosine models); otherwise the relevance score mapped to [0, 1] by the served model's declared score rule
(Capabilities.unit_score: sigmoid scores as they are, cosines as (1 + cosine) / 2), as TEI's non-raw scores
are in [0, 1]. Both are monotonic in the relevance score, so the order is the same either way.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, StrictBool, StrictStr

from lastrank.api.dialects.base import ResponseInfo, Translated, WireModel
from lastrank.errors import InvalidRequestError
from lastrank.types import RerankResult

NAME = "tei"


class Request(WireModel):
    query: StrictStr
    texts: list[StrictStr]
    truncate: Optional[StrictBool] = None
    truncation_direction: Optional[Literal["right", "Right", "left", "Left"]] = None
    raw_scores: Optional[StrictBool] = None
    return_text: Optional[StrictBool] = None
    model: Optional[StrictStr] = Field(None, description="lastrank extension; null: the served model")
    instruction: Optional[StrictStr] = Field(None, description="lastrank extension")


def to_internal(body: Request) -> Translated:
    if (body.truncation_direction or "right").lower() == "left":
        raise InvalidRequestError("truncation_direction 'left' is not supported; this model truncates on the right")
    return Translated(
        query=body.query,
        documents=list(body.texts),
        originals=list(body.texts),
        instruction=body.instruction,
        model=body.model,
        truncate=body.truncate is not False,
        options={"raw_scores": bool(body.raw_scores), "return_text": bool(body.return_text)},
    )


def from_internal(result: RerankResult, t: Translated, info: ResponseInfo) -> tuple[Any, dict]:
    raw = t.options.get("raw_scores", False)
    items = []
    for r in result.results:
        item: dict[str, Any] = {"index": r.index}
        if t.options.get("return_text"):
            item["text"] = t.originals[r.index]
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
