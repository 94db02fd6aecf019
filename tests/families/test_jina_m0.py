"""jina-reranker-m0 (families/jina_m0.py) against the official compute_score, on a tiny random checkpoint.

The reference is the official modeling.py's compute_score, step by step, on transformers (tests/support/reference_m0.py:
its prompt, truncation, processor steps, left-padded batches of one (query type, document type), the head and
sigmoid(logit - 2.65)). lastrank must give the same relevance scores within 1e-5 and the same order.
"""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest

from lastrank.reranker import Reranker
from lastrank.errors import InvalidRequestError
from lastrank.checkpoints.m0 import make_m0_checkpoint
from lastrank.images import image_inputs
from lastrank.types import RerankOptions, RerankRequest

from support.keyword_backend import KeywordBackend
from support.ranking_order import assert_order_agrees
from support.reference_m0 import official_compute_score

PIL = pytest.importorskip("PIL.Image")
ATOL = 1e-5


def image(w, h, seed):
    return PIL.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_m0_checkpoint(tmp_path_factory.mktemp("m0"), "tiny", seed=5, dtype="float32")


@pytest.fixture(scope="module")
def reranker(folder):
    return Reranker(str(folder), dtype="float32")


@pytest.fixture(scope="module")
def official(folder):
    """compute_score(pairs, query_type, doc_type, max_doc_length) -> scores, as the official code computes them."""
    return official_compute_score(folder)


QUERY = "what does the chart of green tea sales show"
DOCS = ["Green tea sales doubled in 2024, the chart shows a steady rise.", "Basketball is popular.",
        "绿茶富含儿茶素", "Le thé vert est riche en antioxydants et peut améliorer la fonction cérébrale. " * 3]
IMAGES = [image(90, 60, 1), image(30, 200, 2), image(300, 300, 3), image(160, 120, 4)]


def ours(reranker, request: RerankRequest) -> list[float]:
    result = reranker.rerank_request(request)
    scores = [0.0] * len(request.documents)
    for r in result.results:
        scores[r.index] = r.relevance_score
    return scores, [r.index for r in result.results]


def check(scores, order, reference):
    np.testing.assert_allclose(scores, reference, rtol=0, atol=ATOL)
    assert_order_agrees(order, reference, ATOL)
    assert max(reference) - min(reference) > 100 * ATOL  # the inputs really score differently


def test_registry_and_capabilities(folder, reranker):
    from lastrank.families import detect_family

    assert detect_family(folder) == "jina-m0"
    caps = reranker.capabilities
    assert caps.family == "jina-m0" and caps.images and caps.score == "sigmoid"
    assert caps.context_length == 10240 and caps.max_doc_length == 9728 and caps.max_query_length == 512


def test_text_query_text_documents(reranker, official):
    scores, order = ours(reranker, RerankRequest(query=QUERY, documents=DOCS))
    check(scores, order, official([(QUERY, d) for d in DOCS]))


def test_text_query_image_documents(reranker, official):
    scores, order = ours(reranker, RerankRequest(query=QUERY, documents=[""] * 4, images=dict(enumerate(IMAGES))))
    check(scores, order, official([(QUERY, im) for im in IMAGES], doc_type="image"))


def test_image_query_text_documents(reranker, official):
    query = image(120, 45, 9)
    scores, order = ours(reranker, RerankRequest(query="", documents=DOCS, images={"query": query}))
    check(scores, order, official([(query, d) for d in DOCS], query_type="image"))


def test_image_query_image_documents(reranker, official):
    query = image(64, 64, 8)
    scores, order = ours(reranker, RerankRequest(query="", documents=[""] * 3,
                                                 images={"query": query, **dict(enumerate(IMAGES[:3]))}))
    check(scores, order, official([(query, im) for im in IMAGES[:3]], query_type="image", doc_type="image"))


def test_mixed_documents_score_as_the_official_per_type_calls(reranker, official):
    """The official code takes one document type per call; a mixed request scores each document as its call."""
    docs = [DOCS[0], "", DOCS[1], ""]
    scores, _ = ours(reranker, RerankRequest(query=QUERY, documents=docs, images={1: IMAGES[0], 3: IMAGES[1]}))
    text = official([(QUERY, DOCS[0]), (QUERY, DOCS[1])])
    imgs = official([(QUERY, IMAGES[0]), (QUERY, IMAGES[1])], doc_type="image")
    np.testing.assert_allclose(scores, [text[0], imgs[0], text[1], imgs[1]], rtol=0, atol=ATOL)


def test_document_truncation_as_official(reranker, official):
    long = "green tea " * 40
    request = RerankRequest(query=QUERY, documents=[long, DOCS[1]], options=RerankOptions(max_doc_length=16))
    result = reranker.rerank_request(request)
    assert result.usage.truncated_indices == [0]
    scores, order = ours(reranker, request)
    np.testing.assert_allclose(scores, official([(QUERY, long), (QUERY, DOCS[1])], max_doc_length=16), rtol=0, atol=ATOL)
    with pytest.raises(InvalidRequestError):
        reranker.rerank_request(RerankRequest(query=QUERY, documents=[long],
                                              options=RerankOptions(max_doc_length=16, truncate=False)))
    with pytest.raises(InvalidRequestError, match="at most 10240"):
        reranker.rerank_request(RerankRequest(query=QUERY, documents=["x"],
                                              options=RerankOptions(max_doc_length=10000)))


def test_the_prompt_cut_reaches_the_query_and_never_an_image(reranker):
    """The processor's cut (the whole prompt to 10,239 tokens, from the right) can reach past the document limit
    only when max_query_length is set small: it cuts a text query, and refuses rather than cut an image query."""
    backend = reranker.backend
    long = "green tea " * 6000  # over 10,239 tokens
    limits = RerankOptions(max_doc_length=10239, max_query_length=1)
    plan = backend.plan(RerankRequest(query=QUERY, documents=[long], options=limits))
    assert plan.usage.truncated_indices == [0] and plan.usage.query_truncated
    assert plan.blocks[0].n_tokens == 10240  # 10,239 prompt tokens and the score token
    with pytest.raises(InvalidRequestError, match="would cut an image"):
        backend.plan(RerankRequest(query="", documents=[long], images={"query": image(56, 56, 0)}, options=limits))
    with pytest.raises(InvalidRequestError, match="the query exceeds 1 tokens"):  # the engine's one refusal
        backend.plan(RerankRequest(query=QUERY, documents=[long], options=replace(limits, truncate=False)))


def test_a_tokenizer_whose_image_pad_is_not_config_jsons_is_refused(folder, tmp_path):
    import json
    import shutil

    from lastrank.errors import ModelNotAvailableError
    from lastrank.families import load_backend

    other = shutil.copytree(folder, tmp_path / "m0")
    config = json.loads((other / "config.json").read_text())
    config["image_token_id"] += 1
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotAvailableError, match="image_token_id"):
        load_backend(str(other), dtype="float32")


def test_usage_counts_image_tokens(reranker):
    result = reranker.rerank_request(RerankRequest(query="q", documents=["", "text"], images={0: image(56, 56, 0)}))
    # a 56x56 image is a 4x4 patch grid = 4 image tokens, plus <|vision_start|> and <|vision_end|>
    assert result.usage.doc_tokens[0] == 6
    assert result.usage.prompt_tokens > 6


def test_python_api_takes_pil_bytes_and_paths(reranker, tmp_path):
    im = image(90, 60, 1)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    path = tmp_path / "page.png"
    path.write_bytes(buf.getvalue())
    results = reranker.rerank("tea", [im, buf.getvalue(), path, "text"])
    by_index = {r["index"]: r for r in results}
    assert by_index[2]["document"] == str(path) and by_index[0]["document"] == "" and by_index[3]["document"] == "text"
    # the same pixels (PNG is lossless) score the same whichever way they came
    assert abs(by_index[0]["relevance_score"] - by_index[1]["relevance_score"]) < 1e-9
    assert abs(by_index[0]["relevance_score"] - by_index[2]["relevance_score"]) < 1e-9


@pytest.mark.parametrize("value,message", [
    (b"not an image at all", "not an image"),
    (b"", "empty"),
    ("a string", "must be a PIL"),
])
def test_bad_images_are_invalid_requests(reranker, value, message):
    with pytest.raises(InvalidRequestError, match=message):
        image_inputs({0: value})  # what the edges decode with (Reranker.rerank, the API)
    if not isinstance(value, str):  # (a str is a text document to Reranker.rerank)
        with pytest.raises(InvalidRequestError, match=message):
            reranker.rerank("q", ["d", value])


def test_a_request_holds_decoded_images_only_and_never_opens_a_file(tmp_path, monkeypatch):
    """Building a RerankRequest is no I/O: a path (or bytes) is refused, unread, naming what decodes it."""
    import builtins

    path = tmp_path / "picture.png"
    image(10, 10, 0).save(path)
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    for value in (path, path.read_bytes()):
        with pytest.raises(InvalidRequestError, match=r"documents\[0\]: a RerankRequest holds decoded images"):
            RerankRequest(query="q", documents=["d"], images={0: value})
    assert opened == []
    decoded = image_inputs({0: path})[0]  # the edge reads it
    assert opened == [path] and RerankRequest(query="q", documents=["d"], images={0: decoded}).images[0] is decoded


def test_decompression_bomb_refused_from_the_header():
    from lastrank.images import MAX_IMAGE_PIXELS

    side = int(MAX_IMAGE_PIXELS ** 0.5) + 10
    buf = io.BytesIO()
    PIL.new("1", (side, side)).save(buf, format="PNG")  # 1-bit, compresses to a few KB
    assert len(buf.getvalue()) < 1 << 20
    with pytest.raises(InvalidRequestError, match="pixels"):
        image_inputs({0: buf.getvalue()})


def test_bad_image_keys():
    with pytest.raises(InvalidRequestError, match="document index"):
        RerankRequest(query="q", documents=["d"], images={1: image(10, 10, 0)})


def test_image_token_text_is_refused(reranker):
    with pytest.raises(InvalidRequestError, match="only images may use"):
        reranker.rerank_request(RerankRequest(query="q", documents=["a <|image_pad|> b"]))


def test_text_only_family_refuses_images():
    from lastrank.engine.chunking import ChunkingBackend

    backend = ChunkingBackend(KeywordBackend())
    with pytest.raises(InvalidRequestError, match="text only"):
        backend.plan(RerankRequest(query="q", documents=["d"], images={0: image(10, 10, 0)}))


def test_chunk_mode_with_images_scores_as_official(reranker, official):
    """Chunk mode with images (engine/chunking.py): each image document is one chunk, scored as the official
    pair; a long text document scores as the best of its windows, each scored by the official code alone;
    the image query is in every pair."""
    query = image(120, 45, 9)
    request = RerankRequest(query="", documents=["", DOCS[3], ""],
                            options=RerankOptions(max_doc_length=16, chunking="chunk", return_spans=True),
                            images={"query": query, 0: IMAGES[0], 2: IMAGES[1]})
    plan = reranker.backend.plan(request)
    a, b = plan.doc_chunks[1]
    windows = [DOCS[3][c.start:c.end] for c in plan.chunks[a:b]]
    assert len(windows) >= 3 and plan.doc_chunks[2] == (b, b + 1)
    result = {r.index: r for r in reranker.rerank_request(request).results}
    imgs = official([(query, IMAGES[0]), (query, IMAGES[1])], query_type="image", doc_type="image")
    np.testing.assert_allclose([result[0].relevance_score, result[2].relevance_score], imgs, rtol=0, atol=ATOL)
    assert result[0].span is None and result[2].span is None  # an image is ranked whole: no character span
    text = np.array(official([(query, w) for w in windows], query_type="image", max_doc_length=16))
    best = int(np.argmax(text))
    assert np.sort(text)[-1] - np.sort(text)[-2] > 10 * ATOL  # the best window is clear
    assert result[1].relevance_score == pytest.approx(text[best], abs=ATOL)
    assert result[1].span == (plan.chunks[a + best].start, plan.chunks[a + best].end)


def test_chunk_window_is_the_official_document_limit(reranker):
    """compute_score's max_doc_length = max(max_length - max_query_length, max_query_length) unless given: chunk
    mode cuts windows of exactly that, so a smaller max_query_length gives longer windows."""
    backend = reranker.backend.inner

    def window(**kw):
        request = RerankRequest(query="q", documents=["d"], options=RerankOptions(**kw))
        return backend.chunk_window(request, backend.limits(request))

    assert window() == 10240 - 512
    assert window(max_query_length=128) == 10240 - 128
    assert window(max_doc_length=300) == 300
    with pytest.raises(InvalidRequestError, match="must be at most"):
        window(max_doc_length=10000, max_query_length=512)


def test_forwards_cut_by_vision_patches_score_the_same(folder, reranker):
    """max_forward_patches bounds the vision encoder's rows per forward: a small one splits the pairs into many
    forwards, with the same scores (packing never changes a pair's result)."""
    from lastrank.families import load_backend

    small = load_backend(str(folder), device="cpu", dtype="float32", max_forward_patches=40)
    request = RerankRequest(query=QUERY, documents=["", DOCS[0], "", DOCS[1]], images={0: IMAGES[0], 2: IMAGES[2]})
    plan = small.plan(request)
    a = small.finish(plan, small.run_blocks(plan.blocks))
    b = reranker.rerank_request(request)
    assert [r.index for r in a.results] == [r.index for r in b.results]
    np.testing.assert_allclose([r.relevance_score for r in a.results], [r.relevance_score for r in b.results],
                               rtol=0, atol=1e-6)


# Encoded images are decoded as the official code decodes them: its load_images keeps a PIL image as given and
# reads a path, base64 or a data URI with transformers' load_image (EXIF orientation, then .convert("RGB"),
# alpha dropped), so one picture given as a file and as a PIL object can score differently, officially.


def rgba_png() -> bytes:
    """A sticker: a patch of colour on a transparent background whose hidden colour is black (as most are), so
    .convert("RGB") shows it on black and compositing on white."""
    rng = np.random.default_rng(11)
    pixels = np.zeros((60, 90, 4), dtype=np.uint8)
    pixels[15:45, 20:70, :3] = rng.integers(0, 256, (30, 50, 3))
    pixels[15:45, 20:70, 3] = rng.integers(128, 256, (30, 50))
    buf = io.BytesIO()
    PIL.fromarray(pixels.astype(np.uint8), "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def rotated_jpeg() -> bytes:
    """A JPEG whose EXIF Orientation is 6 (shown rotated 90 degrees clockwise): 90x60 stored, 60x90 shown."""
    exif = PIL.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    image(90, 60, 12).save(buf, format="JPEG", quality=95, exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize("make,query", [(rgba_png, "a transparent sticker"), (rotated_jpeg, "a photo taken sideways")])
def test_encoded_images_decode_as_the_official_load_image(reranker, official, tmp_path, make, query):
    import base64

    from lastrank.images import decode_base64, image_input

    data = make()
    path = tmp_path / "picture"
    path.write_bytes(data)
    text = base64.b64encode(data).decode()
    uri = "data:image/png;base64," + text
    want_path, want_b64, want_uri = official([(query, str(path)), (query, text), (query, uri)], doc_type="image")
    # one picture three ways: the official code decodes them alike (the same score to float rounding: the
    # three rows of one batch may differ in the last bits, ~2e-8 seen on AMD Zen 3)
    assert max(want_path, want_b64, want_uri) - min(want_path, want_b64, want_uri) <= 1e-6
    # the Python API's path and bytes, and what the HTTP dialects pass on for {"image": base64}
    http = image_input(decode_base64(text, "documents[2]"), "documents[2]")
    scores, _ = ours(reranker, RerankRequest(query=query, documents=["", "", ""], images=image_inputs({0: path, 1: data, 2: http})))
    np.testing.assert_allclose(scores, [want_path] * 3, rtol=0, atol=ATOL)
    # a PIL image is used as given, officially too (the processor composites alpha onto white, ignores EXIF)
    pil = PIL.open(io.BytesIO(data))
    as_given = official([(query, pil)], doc_type="image")[0]
    assert abs(as_given - want_path) > 100 * ATOL  # the two decodings really differ on this picture
    scores, _ = ours(reranker, RerankRequest(query=query, documents=[""], images={0: PIL.open(io.BytesIO(data))}))
    assert scores[0] == pytest.approx(as_given, abs=ATOL)
    # and as the query
    scores, _ = ours(reranker, RerankRequest(query="", documents=[DOCS[0]], images=image_inputs({"query": path})))
    assert scores[0] == pytest.approx(official([(str(path), DOCS[0])], query_type="image")[0], abs=ATOL)
