"""Images over HTTP (Jina /v1/rerank with {"image": base64 | data URI} query and documents), against a tiny
random jina-reranker-m0 in-process: the same scores as the Python API, usage counting image tokens, and a
clear 4xx for every image that cannot be used. Text-only models keep refusing images with a 422 (covered
with the fake model in test_request_options.py / test_bad_inputs.py)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from lastrank.checkpoints.m0 import make_m0_checkpoint
from lastrank.images import image_inputs
from lastrank.types import RerankRequest

PIL = pytest.importorskip("PIL.Image")


def png(w, h, seed) -> bytes:
    buf = io.BytesIO()
    PIL.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    from lastrank.families import load_backend

    folder = make_m0_checkpoint(tmp_path_factory.mktemp("m0"), "tiny", seed=5, dtype="float32")
    return load_backend(str(folder), device="cpu", dtype="float32")


@pytest.fixture
def client(store, backend):
    from fastapi.testclient import TestClient

    from lastrank.api.app import create_app
    from lastrank.api.settings import ServerSettings

    with TestClient(create_app(ServerSettings(), store, backend=backend), raise_server_exceptions=False) as c:
        yield c


def test_image_documents_and_query_rank_as_the_engine(client, backend):
    a, b = png(90, 60, 1), png(30, 200, 2)
    expected = backend.rerank(RerankRequest(query="tea", documents=["", "text doc", ""], images=image_inputs({0: a, 2: b})))
    r = client.post("/v1/rerank", json={"query": "tea", "documents": [
        {"image": b64(a)}, "text doc", {"image": "data:image/png;base64," + b64(b)}]})
    assert r.status_code == 200, r.text
    got = r.json()
    assert [x["index"] for x in got["results"]] == [x.index for x in expected.results]
    for g, e in zip(got["results"], expected.results):
        assert g["relevance_score"] == pytest.approx(e.relevance_score, abs=1e-6)
    assert got["usage"]["total_tokens"] == expected.usage.prompt_tokens  # image tokens counted
    assert got["results"][[x["index"] for x in got["results"]].index(0)]["document"] == {"image": b64(a)}
    q = client.post("/v1/rerank", json={"query": {"image": b64(a)}, "documents": ["x", "y"]})
    assert q.status_code == 200, q.text
    models = client.get("/v1/models").json()
    assert "'images': True" in str(models) or '"images": true' in str(models).lower()


def bomb() -> str:
    from lastrank.images import MAX_IMAGE_PIXELS

    side = int(MAX_IMAGE_PIXELS ** 0.5) + 10
    buf = io.BytesIO()
    PIL.new("1", (side, side)).save(buf, format="PNG")
    return b64(buf.getvalue())


@pytest.mark.parametrize("image,status,needle", [
    ("not base64 !!!", 400, "not valid base64"),
    (b64(b"hello, not an image"), 400, "not an image"),
    ("data:text/plain;base64,aGVsbG8=", 400, "data URI"),
    ("https://example.com/cat.png", 400, "image URLs are not enabled"),
    (b64(png(90, 60, 0)[:200]), 400, "could not be decoded"),
    ("BOMB", 400, "pixels"),
    (b64(png(10, 2100, 0)), 400, "aspect ratio"),
    ("", 400, "empty"),
])
def test_bad_images_are_4xx(client, image, status, needle):
    image = bomb() if image == "BOMB" else image
    for body in ({"query": "q", "documents": [{"image": image}]}, {"query": {"image": image}, "documents": ["d"]}):
        r = client.post("/v1/rerank", json=body)
        assert r.status_code == status, r.text
        assert needle in r.json()["detail"]


def test_too_large_image_is_413(client, monkeypatch):
    import lastrank.images as images

    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 1000)
    r = client.post("/v1/rerank", json={"query": "q", "documents": [{"image": b64(png(90, 60, 0))}]})
    assert r.status_code == 413, r.text


def test_non_string_image_is_4xx(client):
    for body in ({"query": "q", "documents": [{"image": 5}]}, {"query": {"image": 5}, "documents": ["d"]}):
        r = client.post("/v1/rerank", json=body)
        assert 400 <= r.status_code < 500, r.text


@pytest.fixture(scope="module")
def image_server():
    """A loopback HTTP server: /img.png (an image), /redirect (302 to it), /missing (404)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = png(90, 60, 1)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/img.png":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/img.png")
                self.end_headers()
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", body
    server.shutdown()
    server.server_close()


def url_client(store, backend, **settings):
    from fastapi.testclient import TestClient

    from lastrank.api.app import create_app
    from lastrank.api.settings import ServerSettings

    return TestClient(create_app(ServerSettings(**settings), store, backend=backend), raise_server_exceptions=False)


def test_image_url_fetched_only_when_allowed(store, backend, image_server, client):
    base, body = image_server
    docs = [{"image": f"{base}/img.png"}, "text"]
    refused = client.post("/v1/rerank", json={"query": "tea", "documents": docs})  # default: no URLs
    assert refused.status_code == 400 and "not enabled" in refused.json()["detail"]
    with url_client(store, backend, allow_image_urls=("127.0.0.1",)) as c:  # allowed host, but loopback
        r = c.post("/v1/rerank", json={"query": "tea", "documents": docs})
        assert r.status_code == 400 and "loopback" in r.json()["detail"]
    with url_client(store, backend, allow_image_urls=("example.com",), allow_private_image_urls=True) as c:
        r = c.post("/v1/rerank", json={"query": "tea", "documents": docs})
        assert r.status_code == 400 and "not allowed" in r.json()["detail"]
    with url_client(store, backend, allow_image_urls=("127.0.0.1",), allow_private_image_urls=True) as c:
        r = c.post("/v1/rerank", json={"query": "tea", "documents": docs})
        assert r.status_code == 200, r.text
        same = c.post("/v1/rerank", json={"query": "tea", "documents": [{"image": b64(body)}, "text"]})
        assert [x["relevance_score"] for x in r.json()["results"]] == \
            [x["relevance_score"] for x in same.json()["results"]]
        for path, needle in (("/redirect", "redirects are not followed"), ("/missing", "HTTP 404")):
            bad = c.post("/v1/rerank", json={"query": "tea", "documents": [{"image": base + path}]})
            assert bad.status_code == 400 and needle in bad.json()["detail"], bad.text
        closed = c.post("/v1/rerank", json={"query": "tea", "documents": [{"image": "http://127.0.0.1:9/x.png"}]})
        assert closed.status_code == 400 and "could not be fetched" in closed.json()["detail"]


def test_url_policy_addresses():
    from lastrank.images import UrlPolicy, _public

    for address in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "fe80::1", "::ffff:127.0.0.1",
                    "100.64.0.1", "0.0.0.0"):
        assert not _public(address), address
    assert _public("93.184.216.34") and _public("2606:2800:220:1:248:1893:25c8:1946")
    policy = UrlPolicy(("*.example.com", "images.test"))
    assert policy.host_allowed("a.example.com") and policy.host_allowed("IMAGES.test")
    assert not policy.host_allowed("example.com.evil.org") and not policy.host_allowed("evilexample.com")


# -- The same images on every route: Cohere v1 fields, Cohere v2, TEI, and vLLM's content form --------------

def vllm_image(source: str) -> dict:
    return {"content": [{"type": "image_url", "image_url": {"url": source}}]}


def test_every_route_and_form_scores_as_the_jina_route(client):
    a, b = png(90, 60, 1), png(30, 200, 2)
    docs = [{"image": b64(a)}, "text doc", {"image": "data:image/png;base64," + b64(b)}]
    jina = client.post("/v1/rerank", json={"query": "tea", "documents": docs})
    assert jina.status_code == 200, jina.text
    want = [(x["index"], x["relevance_score"]) for x in jina.json()["results"]]
    tokens = jina.json()["usage"]["total_tokens"]
    units = jina.json()["meta"]["billed_units"]
    vllm_docs = [vllm_image(b64(a)), {"content": [{"type": "text", "text": "text doc"}]},
                 vllm_image("data:image/png;base64," + b64(b))]
    for route, documents in (("/v2/rerank", docs), ("/v2/rerank", vllm_docs), ("/v1/rerank", vllm_docs)):
        r = client.post(route, json={"query": "tea", "documents": documents})
        assert r.status_code == 200, (route, r.text)
        body = r.json()
        assert [(x["index"], x["relevance_score"]) for x in body["results"]] == want, route  # exactly equal
        assert body["meta"]["tokens"]["input_tokens"] == tokens and body["meta"]["billed_units"] == units
    tei = client.post("/rerank", json={"query": "tea", "texts": docs})
    assert tei.status_code == 200, tei.text
    # m0's scores are sigmoids already: TEI's [0, 1] score is the relevance score itself
    assert [(x["index"], x["score"]) for x in tei.json()] == want
    assert int(tei.headers["x-compute-tokens"]) == tokens
    assert client.post("/rerank", json={"query": "tea", "texts": vllm_docs}).json() == tei.json()


def test_image_query_on_every_route(client):
    a = png(64, 64, 3)
    docs = ["a cat", "a dog", "tea"]
    jina = client.post("/v1/rerank", json={"query": {"image": b64(a)}, "documents": docs})
    assert jina.status_code == 200, jina.text
    want = [(x["index"], x["relevance_score"]) for x in jina.json()["results"]]
    for query in ({"image": b64(a)}, vllm_image(b64(a))):
        for route, body in (("/v2/rerank", {"documents": docs}), ("/v1/rerank", {"documents": docs})):
            r = client.post(route, json={"query": query, **body})
            assert r.status_code == 200, (route, r.text)
            assert [(x["index"], x["relevance_score"]) for x in r.json()["results"]] == want
        tei = client.post("/rerank", json={"query": query, "texts": docs})
        assert tei.status_code == 200, tei.text
        assert [(x["index"], x["score"]) for x in tei.json()] == want


def test_cohere_v1_objects_with_images_and_rank_fields(client):
    a = png(90, 60, 1)
    docs = [{"image": b64(a), "title": "a photo", "id": "p1"}, {"title": "green tea", "body": "leaves", "id": "t1"}]
    r = client.post("/v1/rerank", json={"query": "tea", "documents": docs, "rank_fields": ["title", "body"],
                                        "return_documents": True})
    assert r.status_code == 200, r.text
    by_index = {x["index"]: x for x in r.json()["results"]}
    assert by_index[0]["document"] == docs[0] and by_index[1]["document"] == docs[1]  # echoed as sent
    # the image document is its image (its fields are not ranked); the text one is ranked on its rank_fields
    same = client.post("/v1/rerank", json={"query": "tea", "documents": [{"image": b64(a)}, "title: green tea\nbody: "
                                                                                            "leaves"]})
    assert {x["index"]: x["relevance_score"] for x in same.json()["results"]} == \
        {i: x["relevance_score"] for i, x in by_index.items()}


def test_tei_return_text_omits_images(client):
    a = png(90, 60, 1)
    texts = [{"image": b64(a)}, "plain text", {"text": "object text", "id": 3},
             {"content": [{"type": "text", "text": "vllm text"}]}]
    r = client.post("/rerank", json={"query": "tea", "texts": texts, "return_text": True, "raw_scores": True})
    assert r.status_code == 200, r.text
    by_index = {x["index"]: x for x in r.json()}
    assert "text" not in by_index[0]
    assert [by_index[i]["text"] for i in (1, 2, 3)] == ["plain text", "object text", "vllm text"]
    assert int(r.headers["x-compute-characters"]) == len("plain text object text vllm text tea") - 3


@pytest.mark.parametrize("image,status,needle", [
    ("not base64 !!!", 400, "not valid base64"),
    (b64(b"hello, not an image"), 400, "not an image"),
    ("https://example.com/cat.png", 400, "image URLs are not enabled"),
    ("BOMB", 400, "pixels"),
])
def test_bad_images_are_4xx_on_every_route(client, image, status, needle):
    image = bomb() if image == "BOMB" else image
    for form in ({"image": image}, vllm_image(image)):
        for route, docs_field in (("/v2/rerank", "documents"), ("/rerank", "texts"), ("/v1/rerank", "documents")):
            for body, where in (({"query": "q", docs_field: ["d", form]}, f"{docs_field}[1]: "),
                                ({"query": form, docs_field: ["d"]}, "query: ")):
                r = client.post(route, json=body)
                assert r.status_code == status, (route, body, r.text)
                detail = r.json()["detail"]
                assert needle in detail and detail.startswith(where), (route, detail)  # named as the wire names it


@pytest.mark.parametrize("content,needle", [
    ([], "holds 0 parts"),
    ([{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "aGk="}}], "holds 2 parts"),
    (["just a string"], "must be an object"),
    ([{"type": "video_url", "video_url": {"url": "https://x/v.mp4"}}], "'video_url' is not supported"),
    ([{"image_url": {"url": "aGk="}}], "type None is not supported"),
    ([{"type": "image_url", "image_url": "aGk="}], "needs \"image_url\": {\"url\""),
    ([{"type": "image_url", "image_url": {"url": 5}}], "needs \"image_url\": {\"url\""),
    ([{"type": "text", "text": None}], "needs a string \"text\""),
])
def test_bad_vllm_content_is_4xx(client, content, needle):
    for route, docs_field in (("/v2/rerank", "documents"), ("/rerank", "texts"), ("/v1/rerank", "documents")):
        doc = client.post(route, json={"query": "q", docs_field: ["d", {"content": content}]})
        assert doc.status_code == 400, (route, doc.text)
        assert doc.json()["detail"].startswith(f"{docs_field}[1].content") and needle in doc.json()["detail"]
        query = client.post(route, json={"query": {"content": content}, docs_field: ["d"]})
        assert query.status_code == 422, (route, query.text)
        assert query.json()["detail"].startswith("invalid request: query: content") and needle in query.json()["detail"]


def test_non_string_image_is_4xx_on_every_route(client):
    for route, docs_field in (("/v2/rerank", "documents"), ("/rerank", "texts")):
        r = client.post(route, json={"query": "q", docs_field: ["d", {"image": 5}]})
        assert r.status_code == 400 and f"{docs_field}[1].image: an image must be" in r.json()["detail"], r.text
        r = client.post(route, json={"query": {"image": ["x"]}, docs_field: ["d"]})
        assert r.status_code == 422 and "query: image: an image must be" in r.json()["detail"], r.text


def test_image_urls_keep_the_guard_on_every_route(store, backend, image_server):
    base, body = image_server
    url = f"{base}/img.png"
    with url_client(store, backend, allow_image_urls=("127.0.0.1",)) as c:  # allowed host, but loopback
        for route, docs_field in (("/v2/rerank", "documents"), ("/rerank", "texts")):
            for form in ({"image": url}, vllm_image(url)):
                r = c.post(route, json={"query": "tea", docs_field: [form, "text"]})
                assert r.status_code == 400 and "loopback" in r.json()["detail"], r.text
    with url_client(store, backend, allow_image_urls=("127.0.0.1",), allow_private_image_urls=True) as c:
        want = c.post("/v1/rerank", json={"query": "tea", "documents": [{"image": b64(body)}, "text"]}).json()
        want = [(x["index"], x["relevance_score"]) for x in want["results"]]
        r = c.post("/v2/rerank", json={"query": "tea", "documents": [vllm_image(url), "text"]})
        assert r.status_code == 200, r.text
        assert [(x["index"], x["relevance_score"]) for x in r.json()["results"]] == want
        r = c.post("/rerank", json={"query": "tea", "texts": [{"image": url}, "text"]})
        assert [(x["index"], x["score"]) for x in r.json()] == want


def test_python_client_sends_pil_bytes_and_paths(client, backend, tmp_path):
    """lastrank.Client.rerank takes images as Reranker.rerank does (PIL image, bytes, path; query too): the
    server ranks them exactly as the engine ranks the same images, and "document" gives back what was passed."""
    from lastrank import Client

    a, b, q = png(90, 60, 1), png(30, 200, 2), png(64, 64, 3)
    path = tmp_path / "b.png"
    path.write_bytes(b)
    pil = PIL.open(io.BytesIO(a))
    expected = backend.rerank(RerankRequest(query="", documents=["", "text doc", ""], images=image_inputs({0: a, 2: b, "query": q})))
    http = Client("http://testserver")
    http._http = client  # the in-process app (a TestClient is an httpx.Client)
    got = http.rerank(PIL.open(io.BytesIO(q)), [pil, "text doc", path])
    assert [r["index"] for r in got] == [r.index for r in expected.results]
    for g, e in zip(got, expected.results):
        assert g["relevance_score"] == pytest.approx(e.relevance_score, abs=1e-6)
    assert got[[r["index"] for r in got].index(2)]["document"] is path
    assert got[[r["index"] for r in got].index(0)]["document"] is pil
    # modes PNG cannot hold are sent as the RGB the model reads: the same scores as the engine on the original
    cmyk, ycc = PIL.open(io.BytesIO(a)).convert("CMYK"), PIL.open(io.BytesIO(b)).convert("YCbCr")
    expected = backend.rerank(RerankRequest(query="tea", documents=["", ""], images={0: cmyk, 1: ycc}))
    got = http.rerank("tea", [cmyk, ycc])
    assert [(g["index"], pytest.approx(g["relevance_score"], abs=1e-6)) for g in got] == \
        [(e.index, e.relevance_score) for e in expected.results]


# -- Decoding as the official code decodes (lastrank/images.py): alpha dropped and EXIF applied for encoded
# images, a PIL image used as given; file: and other non-http URLs named as URLs --------------------------


def sticker() -> bytes:
    """RGBA: colour on a transparent background whose hidden colour is black."""
    pixels = np.zeros((60, 90, 4), dtype=np.uint8)
    pixels[15:45, 20:70, :3] = np.random.default_rng(11).integers(0, 256, (30, 50, 3))
    pixels[15:45, 20:70, 3] = 200
    buf = io.BytesIO()
    PIL.fromarray(pixels, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def sideways_jpeg() -> bytes:
    exif = PIL.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    buf = io.BytesIO()
    PIL.open(io.BytesIO(png(90, 60, 4))).save(buf, format="JPEG", quality=95, exif=exif)
    return buf.getvalue()


def test_base64_images_decode_as_files_do_and_pil_images_as_given(client, backend, tmp_path):
    """{"image": base64} is the official compute_score given that base64 string: the same RGB as the Python API
    given the file (tests/families/test_jina_m0.py checks both against the official code); lastrank.Client sends
    a PIL image so that the server scores it as Reranker does locally (as given, alpha composited, no EXIF)."""
    from lastrank import Client

    for data in (sticker(), sideways_jpeg()):
        path = tmp_path / "picture"
        path.write_bytes(data)
        local = backend.rerank(RerankRequest(query="tea", documents=["", ""], images=image_inputs({0: path, 1: PIL.open(path)})))
        local = {r.index: r.relevance_score for r in local.results}
        assert abs(local[0] - local[1]) > 1e-3  # decoded from bytes vs used as given: really different here
        r = client.post("/v1/rerank", json={"query": "tea", "documents": [{"image": b64(data)}]})
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["relevance_score"] == pytest.approx(local[0], abs=1e-6)
        http = Client("http://testserver")
        http._http = client  # the in-process app (a TestClient is an httpx.Client)
        got = {g["index"]: g["relevance_score"] for g in http.rerank("tea", [path, PIL.open(path)])}
        assert got == {0: pytest.approx(local[0], abs=1e-6), 1: pytest.approx(local[1], abs=1e-6)}


@pytest.mark.parametrize("image,needle", [
    ("file:///etc/passwd", "the image is a file: URL; file URLs are never read"),
    ("FILE:/etc/hostname", "the image is a file: URL; file URLs are never read"),
    ("ftp://example.com/cat.png", "the image is a ftp: URL; only http(s) image URLs are fetched"),
])
def test_non_http_urls_are_named_as_urls_and_never_read(store, backend, client, image, needle):
    r = client.post("/v1/rerank", json={"query": "q", "documents": [{"image": image}]})
    assert r.status_code == 400 and needle in r.json()["detail"], r.text
    with url_client(store, backend, allow_image_urls=("example.com",)) as c:  # URLs on
        r = c.post("/v1/rerank", json={"query": "q", "documents": [{"image": image}]})
        assert r.status_code == 400 and needle in r.json()["detail"], r.text
