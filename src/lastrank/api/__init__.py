"""The rerank API server: `create_app(settings, store, models=[...] | scheduler= | backend= | load_backend=)`
in api/app.py; one or several served models (api/models.py), each with its own scheduler.

Routes
    POST /v1/rerank   Jina body; Cohere v1 fields (rank_fields, return_documents, max_chunks_per_doc)
    POST /v2/rerank   Cohere v2 body and response shape
    POST /rerank      TEI when the body has `texts` (bare-array response), Jina otherwise
    GET  /v1/models   every served model with its capabilities (needs a key like the rerank routes)
    GET  /health      liveness, always open
    GET  /ready       503 + Retry-After until every model is loaded and warmed, then 200; open
    GET  /metrics     Prometheus text, open
    /docs, /redoc, /openapi.json, /playground

Decisions (each tested in tests/api):
- Model names: `model` names a served model by its served name (--served-model-name, else the family's
  public name such as "jina-reranker-v3", else the id's last part), its --model value, a --model-alias, or
  a name its family is known by ("jinaai/jina-reranker-v3", "all-MiniLM-L6-v2"). With one model it may be
  omitted/null; with several it is required (400 listing them). Anything else is 404 listing the served
  names. A key limited to other models gets 403. Responses always carry the served name.
- The query and every document take the same input forms on every route (a string, {"text": ...},
  {"image": ...} or vLLM's {"content": [one part]}; dialects/base.py lists them and `split_inputs` reads
  them). An image reaches only a model that takes images (Capabilities.images: jina-reranker-m0), else 422;
  a value none of these forms reads is refused with a message naming where it is. A blank query text is the
  empty-query 400.
- Documents are strings or objects. Objects are ranked on `text`, or on `rank_fields` (one field: its
  value; several: "field: value" lines in the order given); they are echoed back exactly as sent.
  Returned documents are objects: {"text": ...} for a string document.
- return_documents defaults to true on /v1/rerank and /rerank (Jina), false on /v2/rerank (Cohere v2).
- top_n: null = all; larger than the number of documents = all; 0 = no results (as Reranker.rerank);
  negative = 422. max_doc_length / max_tokens_per_doc / max_query_length null = the served family's
  official defaults (jina-v3: 2048 / 512; Cohere's 4096 would change the ranking). priority is accepted
  and ignored.
- Long documents (engine/chunking.py): a document over max_doc_length tokens is truncated, unless the
  request's `chunking` (Jina route, lastrank extension) or the server's --chunking says "chunk": then it
  is ranked in windows of that many tokens and scored by its best window. Cohere v1's max_chunks_per_doc
  means chunk mode with at most that many windows per document (the rest is not ranked and the document
  is reported as truncated); Cohere v2's max_tokens_per_doc is the truncation length or, in chunk mode,
  the window. `return_spans` adds `span` [start, end) (the best window's characters) to each result.
  More than --max-chunks windows in one request is a 400.
- An empty documents list is a 200 with empty results (and a ledger row with 0 documents, cost 0);
  TEI's empty `texts` too, unlike TEI (one rule for every dialect). An empty or blank query is a 400.
- Scores follow the served model's declared rule (engine/backend.py), unchanged in every dialect:
  a cosine in [-1, 1] (jina-v3, bi-encoders) or sigmoid(raw logit) in [0, 1] (cross-encoders, causal-LM
  rerankers, m0). TEI without raw_scores maps them to [0, 1] by Capabilities.unit_score ((1 + s) / 2 for
  a cosine, unchanged for a sigmoid); TEI raw_scores returns the raw score (the logit, or the cosine).
- score_threshold (lastrank extension, Jina/Cohere v1 and Cohere v2; TEI ignores it as an unknown
  field): a finite JSON number (a string, a bool or an integer too large for a float is a 422; NaN,
  Infinity and 1e999 are not JSON and are refused with the body, below), null = none. Order: rank every document, drop results with relevance_score < threshold (equal
  is kept, on the same scale as the returned scores), then top_n: a threshold that leaves fewer than
  top_n results returns fewer. Both go to the backend's one ranking rule (engine/backend.rank), the only
  place that cuts. Billing is unchanged: every document sent was ranked.
- Ties: the order is the backend's ranking rule's, and every dialect keeps it (the API never re-sorts; tested: the same
  request sent twice gives identical scores and order, and the same order in every dialect). Two
  identical documents need not tie: the model reads a block's documents in one causal prompt, so a
  later copy is scored in a different context (with the fake scorer, which ties them, the tie order
  survives every dialect).
- Truncation is reported, never an error (except TEI truncate=false, a 400 decided when the request is
  planned, before any model work): every 200 carries
  `X-Lastrank-Truncated-Documents: N` and `X-Lastrank-Query-Truncated: true|false` (TEI's bare array
  included), and Jina and Cohere bodies carry `meta.warnings` (Cohere's ApiMeta.warnings, list[str];
  always present, [] when nothing was cut), e.g. "2 of 40 documents (indices 3, 17) were truncated to
  their first 2048 tokens before ranking" and "the query was truncated to its first 512 tokens before
  ranking". Indices (at most 10) come from the plan (Usage.truncated_indices).
- search_units (Cohere's meta.billed_units) = ceil(documents / 100), 0 for no documents; in chunk mode
  every window counts as a document (Cohere's rule), so ceil(chunks / 100). The ledger's documents,
  cost (--price-per-1k-docs) and per-key documents-per-minute limits count the documents the client
  sent; its tokens are the tokens actually run (every window, overlaps included).
- Status codes (api/errors.py is the one table): malformed JSON (NaN, Infinity, -Infinity or a number
  that overflows a float anywhere in the body included, on every route), invalid UTF-8, a non-object body,
  empty query, document objects without text -> 400; schema violations (wrong types, nulls in required
  fields, negative numbers, a query object without text) -> 422; too
  many documents, too long a document or query, a body over --max-body-bytes (bytes counted as they
  arrive), a request bigger than the queue -> 413; unknown model or route -> 404; missing/wrong key ->
  401; revoked key, or a key limited to other models -> 403; per-key rate limit -> 429 + Retry-After; queue full, model loading -> 503 +
  Retry-After; deadline (--request-timeout-s) -> 504 + Retry-After; client gone -> the scheduler task
  is cancelled (logged as 499, nothing sent); a model failure -> 500 (model_error). Unknown fields are
  ignored; every optional field accepts null.
- Ledger: one row per 200 response, committed before the response is sent. A request whose row was
  written but whose response was cut off (crash, disconnect at that instant) is billed without the
  client seeing it; a client never sees a 200 that is not billed, and nothing is billed twice.
"""
