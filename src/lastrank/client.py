"""`lastrank.Client`: the HTTP twin of `Reranker.rerank`.

    from lastrank import Client
    client = Client("http://127.0.0.1:8080", api_key="lr-...")
    client.rerank(query, documents, model=None, **options)   # options: lastrank.RerankOptions by name
    -> [{"index", "relevance_score", "document", "embedding"}], best first, as Reranker.rerank

It posts the Jina dialect (plus lastrank's extension fields) to `/v1/rerank`, asks for no document
echo (the documents are already here) and rebuilds the same dicts. Images (multimodal models) are taken as
Reranker.rerank takes them (PIL image, encoded bytes, a path) and sent as {"image": base64}. Server errors are raised as the
matching `lastrank.errors` class (from the body's `error.type`, else the status), with the server's
message and `retry_after` from Retry-After.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from lastrank import errors as E
from lastrank.images import encode_image, is_image_input
from lastrank.types import RerankOptions

_BY_TYPE: dict[str, type[E.LastrankError]] = {
    cls.type: cls
    for cls in (E.InvalidRequestError, E.PayloadTooLargeError, E.AuthError, E.PermissionDeniedError, E.NotFoundError,
                E.RateLimitedError, E.OverloadedError, E.DeadlineExceededError, E.ModelError,
                E.ModelNotAvailableError)
}
_BY_STATUS: dict[int, type[E.LastrankError]] = {
    400: E.InvalidRequestError, 401: E.AuthError, 403: E.PermissionDeniedError, 404: E.NotFoundError,
    413: E.PayloadTooLargeError, 422: E.InvalidRequestError, 429: E.RateLimitedError, 503: E.OverloadedError,
    504: E.DeadlineExceededError,
}


class ServerUnavailableError(E.OverloadedError):
    """The server cannot be reached (connection refused, reset, or a transport timeout)."""

    type = "server_unavailable"


def _error_from_response(resp: httpx.Response) -> E.LastrankError:
    message = f"HTTP {resp.status_code}"
    type_ = None
    try:
        body = resp.json()
        if isinstance(body, dict):
            err = body.get("error")
            if isinstance(err, dict):
                message = err.get("message") or message
                type_ = err.get("type")
            elif isinstance(body.get("detail"), str):
                message = body["detail"]
    except ValueError:
        if resp.text:
            message = f"HTTP {resp.status_code}: {resp.text[:200]}"
    retry_after = None
    if "retry-after" in resp.headers:
        try:
            retry_after = float(resp.headers["retry-after"])
        except ValueError:
            pass
    cls = _BY_TYPE.get(type_ or "") or _BY_STATUS.get(resp.status_code)
    if cls is None:
        cls = E.ModelError if resp.status_code >= 500 else E.InvalidRequestError
    if resp.status_code == 503 and type_ not in _BY_TYPE:
        cls = E.OverloadedError  # e.g. not ready yet: retryable
    return cls(message, retry_after=retry_after)


def _wire_input(value, where: str):
    """A text stays itself; an image (images.is_image_input) becomes Jina's {"image": base64} object."""
    return {"image": encode_image(value, where)} if is_image_input(value) else value


class Client:
    def __init__(self, base_url: str = "http://127.0.0.1:8080", api_key: str | None = None, timeout: float = 300.0,
                 max_retries: int = 0):
        """`max_retries`: how many times to retry 429/503 answers, waiting Retry-After (default: none)."""
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        headers = {"User-Agent": "lastrank-client"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    def _post(self, path: str, body: dict) -> httpx.Response:
        attempt = 0
        while True:
            try:
                resp = self._http.post(path, json=body)
            except httpx.TimeoutException as e:
                raise E.DeadlineExceededError(f"no answer from {self.base_url} in time: {e}") from e
            except httpx.TransportError as e:
                raise ServerUnavailableError(f"cannot reach {self.base_url}: {e}") from e
            if resp.status_code in (429, 503) and attempt < self.max_retries:
                attempt += 1
                try:
                    wait = float(resp.headers.get("retry-after", "1"))
                except ValueError:
                    wait = 1.0
                time.sleep(min(max(wait, 0.1), 60.0))
                continue
            return resp

    def rerank(self, query, documents: list, model: str | None = None, **options) -> list[dict]:
        """Documents best first: [{"index", "relevance_score", "document", "embedding"}], as Reranker.rerank
        (plus "span" with return_spans in chunk mode). `options` as Reranker.rerank's (lastrank.RerankOptions by
        name), checked here and sent as the Jina body's fields of the same names; an option not given is left
        to the server: max_doc_length / max_query_length the model's own limits (its Capabilities), chunking
        serve's --chunking. `model`: None, the server's only model (a server with several needs `model`: one of
        its /v1/models ids).
        As in Reranker.rerank, the query and any document may be an image (PIL.Image, encoded bytes, a path) for
        a multimodal model: it is sent as {"image": base64}, and "document" gives back the object passed."""
        checked = RerankOptions(**options)  # before anything is sent (the server checks again)
        if not checked.truncate:
            raise E.InvalidRequestError("truncate=False is not carried by /v1/rerank (the Jina body has no truncate); "
                                        "Reranker.rerank and TEI's /rerank take it")
        # the options given, as RerankOptions normalised them (numpy numbers -> int / float, which JSON takes)
        options = {name: getattr(checked, name) for name in options if name != "truncate"}
        documents = list(documents)
        body: dict[str, Any] = {
            "model": model,
            "query": _wire_input(query, "query"),
            "documents": [_wire_input(d, f"documents[{i}]") for i, d in enumerate(documents)],
            "return_documents": False,
            **options,
        }
        resp = self._post("/v1/rerank", body)
        if resp.status_code != 200:
            raise _error_from_response(resp)
        return [
            {
                "index": r["index"],
                "relevance_score": r["relevance_score"],
                "document": documents[r["index"]],
                "embedding": r.get("embedding") if options.get("return_embeddings") else None,
                **({"span": r["span"]} if "span" in r else {}),
            }
            for r in resp.json()["results"]
        ]

    def ready(self) -> bool:
        try:
            return self._http.get("/ready").status_code == 200
        except httpx.TransportError:
            return False
