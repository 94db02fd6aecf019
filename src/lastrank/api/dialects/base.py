"""What every dialect shares: documents as strings or objects, the translated request, response facts.

A dialect is a module with:
    NAME                       "jina" | "cohere_v1" | "cohere_v2" | "tei"
    Request                    a pydantic model of the wire body (every optional field accepts null,
                               unknown fields are ignored)
    to_internal(body, defaults) -> Translated   (defaults: the server's RerankOptions, under the wire's)
    from_internal(result, translated, info) -> (json content, extra headers)

Dialects only translate. Validation against server limits, auth, rate limits, the scheduler, the ledger
and metrics all happen once, in api/handler.py.

Object documents and `rank_fields`: a document may be a string or an object. The text ranked for an
object is, with no `rank_fields`, its `text` field. With `rank_fields` [f1, f2, ...], the listed
fields the object has, in the order given: one field alone is ranked as its value; several are joined
one per line as `f1: value1\\nf2: value2` (the YAML-like form Cohere recommends for structured data).
Non-string values are written as JSON. An object with none of the fields is a 400. Objects are echoed
back exactly as given (all their fields) when documents are returned.

Text or image: the query and every document may be, on every route (Jina, Cohere v1 and v2, TEI):
    "..."                                           text
    {"text": "...", ...}                            text (Jina's TextDoc; a document may use rank_fields instead)
    {"image": "<base64 | data URI | URL>", ...}     an image (Jina's ImageDoc); other fields are echoed, not ranked
    {"content": [<one part>]}                       vLLM's multimodal form, one part per input:
        {"type": "text", "text": "..."} or {"type": "image_url", "image_url": {"url": "<data URI | base64 | URL>"}}
An object's `image` (when not null) wins over its text, on every route. `content` is read as vLLM's form only
when it is a list, the object has no `text` and no rank_fields are given: a Cohere or Jina document may carry a
metadata field named `content`, and every object that was ranked on its text before stays so. Several parts in
one `content` (text and image together) are refused: each input is one text or one image. Images reach only models whose capabilities
say `images` (a text-only model answers 422); image URLs are fetched only where the server allows their host
(handler._decode_images). `split_inputs` is the one reader of these forms, for every dialect.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import Annotated, Any, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr, WithJsonSchema
from pydantic_core import PydanticCustomError

from lastrank.engine.backend import Capabilities
from lastrank.errors import InvalidRequestError
from lastrank.types import RerankOptions, RerankResult

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
    """A dialect's request translated to engine terms (its RerankOptions), plus what its response needs."""

    query: str
    documents: list[str]  # the texts ranked
    originals: list[Any]  # as the client sent them (str or dict), for echo
    options: RerankOptions = field(default_factory=RerankOptions)  # wire_options: built once, by the dialect
    return_documents: bool = False
    model: str | None = None
    dialect_options: Any = None  # a dialect's own response switches, typed by it (e.g. tei.Options)
    # image query / documents (split_inputs: {"image": ...} or vLLM's image_url part): "query" / document index ->
    # the base64, data URI or URL string as sent; their `documents` entries (and query) are "". Decoded, fetched
    # (where allowed) and checked in handler.to_request.
    images: dict | None = None
    documents_field: str = "documents"  # the wire's name for the documents (TEI: "texts"), for error messages


OPTION_NAMES = frozenset(f.name for f in fields(RerankOptions))


def wire_options(body: WireModel, defaults: RerankOptions, **renamed) -> RerankOptions:
    """The request's RerankOptions, from every field of the wire body named as a RerankOptions field, plus
    `renamed` (options the dialect names otherwise, e.g. Cohere v2's max_tokens_per_doc); a null or absent one
    keeps `defaults` (the server's: handler.option_defaults). So a new option is added to RerankOptions and to
    the schema, by the same name, and nowhere here. The schema checked the shapes (a 422 naming the field);
    RerankOptions checks the rest, once."""
    given = {name: getattr(body, name) for name in type(body).model_fields if name in OPTION_NAMES}
    given.update(renamed)
    return replace(defaults, **{k: v for k, v in given.items() if v is not None})


@dataclass
class ResponseInfo:
    """Facts the handler knows that every response format may show."""

    request_id: str
    model: str  # the served model name
    search_units: int
    capabilities: Capabilities  # the served model's score definition (unit_score for [0, 1] formats)
    warnings: list[str] = field(default_factory=list)  # shown as meta.warnings where the format has a meta


# -- The query and documents: text or image, in every dialect's forms (module docstring) --------------------

QUERY_FORMS = ('a string or an object: {"text": "..."}, {"image": "<base64, data URI or URL>"} (multimodal models) '
               'or vLLM\'s {"content": [{"type": "text", "text": "..."} | {"type": "image_url", "image_url": '
               '{"url": "..."}}]}')
IMAGE_UNSUPPORTED = 'image queries are not supported (this model ranks text only); send a string or {"text": "..."}'
PART_FORMS = '{"type": "text", "text": "..."} or {"type": "image_url", "image_url": {"url": "<data URI, base64 or URL>"}}'


class InputFormError(Exception):
    """An object the input forms cannot read. `path` says where inside it (".content[0]"); the caller adds
    which input it is (the query: a 422 from its validator; a document: a 400 from split_inputs)."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.message = message
        self.path = path


def object_input(value: dict, rank_fields: bool = False) -> tuple[str, str] | None:
    """What an input object stands for: ("image", source) or ("text", text) from its `image` or vLLM `content`
    form, or None for any other object (its text is its `text` field or rank_fields: document_text)."""
    image = value.get("image")
    if image is not None:
        if not isinstance(image, str):
            raise InputFormError(f"an image must be a base64 string, a data URI or a URL, got {type(image).__name__}",
                                 ".image")
        return "image", image
    content = value.get("content")
    if not isinstance(content, list) or rank_fields or "text" in value:
        return None
    if len(content) != 1:
        raise InputFormError(f"holds {len(content)} parts; send exactly one part ({PART_FORMS}): each input is one "
                             f"text or one image (text and image together in one input are not supported)",
                             ".content")
    part = content[0]
    if not isinstance(part, dict):
        raise InputFormError(f"a content part must be an object: {PART_FORMS}", ".content[0]")
    kind = part.get("type")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise InputFormError('a text part needs a string "text" field', ".content[0]")
        return "text", part["text"]
    if kind == "image_url":
        ref = part.get("image_url")
        url = ref.get("url") if isinstance(ref, dict) else None
        if not isinstance(url, str):
            raise InputFormError('an image_url part needs "image_url": {"url": "<data URI, base64 or URL>"}',
                                 ".content[0]")
        return "image", url
    raise InputFormError(f"content part type {kind!r} is not supported; send {PART_FORMS}", ".content[0]")


def _query_input(value: Any) -> Any:
    """The query's validator: text -> str, an image -> {"image": source} (whether the model takes images is the
    handler's check, per model). Anything else is a 422 naming the forms."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        try:
            form = object_input(value)
        except InputFormError as e:
            raise PydanticCustomError("query_object", "{where}{message}",
                                      {"where": f"{e.path[1:]}: " if e.path else "", "message": e.message}) from None
        if form is not None:
            kind, v = form
            return {"image": v} if kind == "image" else v
        if isinstance(value.get("text"), str):  # other fields of the object are ignored
            return value["text"]
        raise PydanticCustomError("query_object", "a query object needs a string 'text' field; send {forms}",
                                  {"forms": QUERY_FORMS})
    raise PydanticCustomError("query_type", "query must be {forms}, got {got}",
                              {"forms": QUERY_FORMS, "got": "null" if value is None else type(value).__name__})


_PART_SCHEMA = {"type": "object", "properties": {"type": {"enum": ["text", "image_url"]}, "text": {"type": "string"},
                                                 "image_url": {"type": "object",
                                                               "properties": {"url": {"type": "string"}}}},
                "required": ["type"]}

# The query of every dialect: a string, or one of the object forms (module docstring).
Query = Annotated[
    Union[StrictStr, dict[str, StrictStr]],
    BeforeValidator(_query_input),
    WithJsonSchema({"anyOf": [{"type": "string"},
                              {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
                              {"type": "object", "properties": {"image": {"type": "string"}}, "required": ["image"]},
                              {"type": "object", "properties": {"content": {"type": "array", "items": _PART_SCHEMA,
                                                                            "minItems": 1, "maxItems": 1}},
                               "required": ["content"]}],
                    "description": "the query: a string, {\"text\": ...}, {\"image\": base64, data URI or URL} "
                                   "(multimodal models only) or vLLM's {\"content\": [one text or image_url part]}"}),
]


def document_text(where: str, doc: Any, fields: list[str] | None) -> str:
    """The text ranked for a text document (`where`: "documents[3]"): a string itself, an object's `text` or its
    rank_fields."""
    if isinstance(doc, str):
        return doc
    if fields is None:  # an object (the schema's Document)
        text = doc.get("text")
        if not isinstance(text, str):
            raise InvalidRequestError(
                f"{where} is an object without a string 'text' field; add one or pass rank_fields")
        return text
    present = [f for f in fields if f in doc and doc[f] is not None]
    if not present:
        raise InvalidRequestError(f"{where} has none of the rank_fields {fields}")
    values = [doc[f] if isinstance(doc[f], str) else json.dumps(doc[f], ensure_ascii=False) for f in present]
    if len(fields) == 1:
        return values[0]
    return "\n".join(f"{f}: {v}" for f, v in zip(present, values))


def split_inputs(query: Any, documents: list, rank_fields: list[str] | None = None,
                 field_name: str = "documents") -> tuple[str, list[str], dict]:
    """-> (query text, the text ranked for each document, images {"query" / index: source as sent}).
    `query` is what the Query validator returned; an image input's text is "". Bad document objects are 400s
    naming the document as the wire does (`field_name`: TEI's "texts") and where inside it."""
    fields = [f for f in (rank_fields or []) if isinstance(f, str)] or None
    images: dict = {}
    if isinstance(query, dict):
        images["query"] = query["image"]
        query = ""
    texts = []
    for i, doc in enumerate(documents):
        form = None
        if isinstance(doc, dict):
            try:
                form = object_input(doc, rank_fields=fields is not None)
            except InputFormError as e:
                raise InvalidRequestError(f"{field_name}[{i}]{e.path}: {e.message}") from None
        if form is not None and form[0] == "image":
            images[i] = form[1]
            texts.append("")
        else:
            texts.append(form[1] if form is not None else document_text(f"{field_name}[{i}]", doc, fields))
    return query, texts, images


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
        if t.options.return_embeddings:
            item["embedding"] = r.embedding
        if r.span is not None:  # asked for (return_spans) and chunk mode
            item["span"] = list(r.span)
        items.append(item)
    return items
