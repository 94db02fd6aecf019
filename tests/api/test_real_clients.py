"""Real client libraries against a real `lastrank serve` process on a tiny random checkpoint.

Each client changes only its URL (and names the served model, since their defaults name Jina's or
Cohere's hosted models) and must give the same order as `Reranker.rerank` in-process, float32 on both
sides. Also: keys over the wire, the ledger, and SIGKILL under load.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from support.kill_under_load import Load, assert_billed_exactly
from support.server_process import DOCS, QUERY, ServerProcess, create_key, free_port

MODEL = "jina-reranker-v3"


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    srv = ServerProcess(tiny_checkpoint, tmp / "ledger.db", tmp / "server.log")
    srv.start()
    # created after start: a running open server switches to keys on the next request
    srv.key = create_key(srv.db, "tests")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference(tiny_reranker):
    return [r["index"] for r in tiny_reranker.rerank(QUERY, DOCS)]


def test_reference_order_is_not_trivial(reference, tiny_reranker):
    """Every client test compares with `reference`: it must tell a client that echoes the input order (or
    reverses it) from a real ranking. The tiny random checkpoint favours early documents (measured order
    [0, 1, 3, 2, 4, 5, 6, 7]), so the input order fails only at ranks 3-4, but it does fail; the scores are
    distinct, with gaps (>= 4e-4 measured) far above float noise between the server and this process."""
    n = len(DOCS)
    assert sorted(reference) == list(range(n))
    assert reference != list(range(n)) and reference != list(range(n))[::-1]
    assert reference[:3] != [0, 1, 2]  # the top_n=3 comparisons can fail too
    scores = [r["relevance_score"] for r in tiny_reranker.rerank(QUERY, DOCS)]
    assert min(a - b for a, b in zip(scores, scores[1:])) > 1e-4


def test_cohere_v1_client(server, reference):
    import cohere

    co = cohere.Client(api_key=server.key, base_url=server.url)
    resp = co.rerank(model=MODEL, query=QUERY, documents=DOCS, top_n=3)
    assert [r.index for r in resp.results] == reference[:3]
    assert resp.results[0].document.text == DOCS[reference[0]]
    assert resp.meta.billed_units.search_units == 1
    assert resp.meta.warnings == []
    assert resp.id
    # object documents with rank_fields, echoed back with their fields
    docs = [{"title": d, "id": f"doc-{i}"} for i, d in enumerate(DOCS)]
    resp = co.rerank(model=MODEL, query=QUERY, documents=docs, rank_fields=["title"], return_documents=True)
    assert [r.index for r in resp.results] == reference
    assert resp.results[0].document.id == f"doc-{reference[0]}"


def test_cohere_v2_client(server, reference):
    import cohere

    co = cohere.ClientV2(api_key=server.key, base_url=server.url)
    resp = co.rerank(model=MODEL, query=QUERY, documents=DOCS, top_n=4, max_tokens_per_doc=None, priority=None)
    assert [r.index for r in resp.results] == reference[:4]
    assert resp.meta.billed_units.search_units == 1
    assert resp.meta.api_version.version == "2"
    assert resp.meta.warnings == []
    # truncation is reported in meta.warnings, which the SDK models as list[str]
    resp = co.rerank(model=MODEL, query=QUERY, documents=DOCS, max_tokens_per_doc=4)
    assert len(resp.results) == len(DOCS)
    assert resp.meta.warnings and resp.meta.warnings[0].endswith("were truncated to their first 4 tokens before ranking")


def test_cohere_errors_map_to_sdk_exceptions(server):
    import cohere
    from cohere.errors import NotFoundError, UnauthorizedError

    with pytest.raises(UnauthorizedError):
        cohere.ClientV2(api_key="wrong", base_url=server.url).rerank(model=MODEL, query=QUERY, documents=DOCS)
    with pytest.raises(NotFoundError):
        cohere.ClientV2(api_key=server.key, base_url=server.url).rerank(model="rerank-v3.5", query=QUERY,
                                                                        documents=DOCS)


def test_langchain_cohere_rerank(server, reference):
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    rr = CohereRerank(cohere_api_key=server.key, base_url=server.url, model=MODEL, top_n=3)
    out = rr.compress_documents([Document(page_content=d) for d in DOCS], QUERY)
    assert [d.page_content for d in out] == [DOCS[i] for i in reference[:3]]
    assert "relevance_score" in out[0].metadata


@pytest.mark.filterwarnings("ignore:.*langchain-community.*:DeprecationWarning")
def test_langchain_community_jina_rerank(server, reference, monkeypatch):
    from langchain_community.document_compressors import jina_rerank
    from langchain_core.documents import Document

    monkeypatch.setattr(jina_rerank, "JINA_API_URL", server.url + "/v1/rerank")
    rr = jina_rerank.JinaRerank(jina_api_key=server.key, model=MODEL, top_n=3)
    out = rr.compress_documents([Document(page_content=d) for d in DOCS], QUERY)
    assert [d.page_content for d in out] == [DOCS[i] for i in reference[:3]]
    # errors surface through resp["detail"]
    bad = jina_rerank.JinaRerank(jina_api_key="wrong", model=MODEL, top_n=3)
    with pytest.raises(RuntimeError, match="invalid API key"):
        bad.rerank(DOCS, QUERY)


def test_llama_index_jina_rerank(server, reference):
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.jinaai_rerank import JinaRerank

    rr = JinaRerank(base_url=server.url + "/v1", api_key=server.key, model=MODEL, top_n=3)
    nodes = [NodeWithScore(node=TextNode(text=d), score=0.0) for d in DOCS]
    out = rr.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    assert [n.node.get_content() for n in out] == [DOCS[i] for i in reference[:3]]


def test_haystack_jina_ranker(server, reference):
    from haystack import Document
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.jina import JinaRanker

    ranker = JinaRanker(api_key=Secret.from_token(server.key), model=MODEL, top_k=3,
                        base_url=server.url + "/v1/rerank")
    out = ranker.run(query=QUERY, documents=[Document(content=d) for d in DOCS])
    assert [d.content for d in out["documents"]] == [DOCS[i] for i in reference[:3]]
    assert out["meta"]["model"] == MODEL and out["meta"]["usage"]["total_tokens"] > 0


def test_tei_over_httpx(server, reference):
    r = httpx.post(server.url + "/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True},
                   headers={"Authorization": f"Bearer {server.key}"}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body] == reference
    assert body[0]["text"] == DOCS[reference[0]] and 0 <= body[-1]["score"] <= body[0]["score"] <= 1
    assert r.headers["x-lastrank-truncated-documents"] == "0"


def test_lastrank_client_matches_reranker(server, tiny_reranker):
    from lastrank import Client
    from lastrank.errors import AuthError, NotFoundError

    expected = tiny_reranker.rerank(QUERY, DOCS, top_n=5, return_embeddings=True, instruction="prefer physics",
                                    max_doc_length=16)
    with Client(server.url, api_key=server.key, timeout=60) as client:
        got = client.rerank(QUERY, DOCS, top_n=5, return_embeddings=True, instruction="prefer physics",
                            max_doc_length=16)
    assert [g["index"] for g in got] == [e["index"] for e in expected]
    for g, e in zip(got, expected):
        assert g["document"] == e["document"]
        assert g["relevance_score"] == pytest.approx(float(e["relevance_score"]), abs=1e-5)
        assert g["embedding"] == pytest.approx([float(x) for x in e["embedding"]], abs=1e-5)
    with pytest.raises(AuthError):
        Client(server.url, api_key="nope").rerank(QUERY, DOCS)
    with pytest.raises(NotFoundError):
        # the Client always uses the served model; an unknown route is still a clear error
        Client(server.url + "/nowhere", api_key=server.key).rerank(QUERY, DOCS)


def test_every_inference_route_needs_the_key(server):
    bodies = {"/v1/rerank": {"query": QUERY, "documents": DOCS}, "/v2/rerank": {"query": QUERY, "documents": DOCS},
              "/rerank": {"query": QUERY, "texts": DOCS}}
    for path, body in bodies.items():
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Token {server.key}"}):
            r = httpx.post(server.url + path, json=body, headers=headers, timeout=30)
            assert r.status_code == 401, (path, headers, r.status_code)
            assert r.json()["detail"]
        r = httpx.post(server.url + path, json=body, headers={"Authorization": f"bearer {server.key}"}, timeout=30)
        assert r.status_code == 200, (path, r.text)
    assert httpx.get(server.url + "/v1/models", timeout=10).status_code == 401
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(server.url + path, timeout=10).status_code == 200
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert "lastrank_engine_tokens_total" in metrics and 'status="401"' in metrics


def test_refuses_open_non_loopback(tiny_checkpoint, tmp_path):
    out = subprocess.run([sys.executable, "-m", "lastrank", "serve", "--model", str(tiny_checkpoint), "--host",
                          "0.0.0.0", "--port", str(free_port()), "--db", str(tmp_path / "x.db")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--allow-unauthenticated" in out.stderr


def test_missing_checkpoint_fails_fast(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lastrank", "serve", "--model", str(tmp_path / "nope"), "--port",
                          str(free_port()), "--db", str(tmp_path / "x.db")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_sigkill_under_load_keeps_the_ledger_exact(tiny_checkpoint, tmp_path):
    """Kill -9 while concurrent requests are in flight, restart on the same DB: every 200 a client got is in
    the ledger exactly once. A row may exist for a request answered by the server but cut off by the kill
    (written before its response was sent); there are at most as many as requests that failed in flight."""
    from lastrank.store import Store

    srv = ServerProcess(tiny_checkpoint, tmp_path / "ledger.db", tmp_path / "server.log")
    srv.start()
    with Load(srv.url, QUERY, DOCS, clients=8, seconds=60, stop_when_cut=True) as load:
        load.wait_for(20)
        srv.kill()
    assert len(load.answered) >= 20, srv.log()
    assert len(load.cut) >= 1  # the kill really cut requests off

    srv.start()  # same DB, new process
    try:
        r = httpx.post(srv.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS}, timeout=60)
        assert r.status_code == 200
    finally:
        srv.stop()

    with Store(srv.db) as store:
        rows = store.list_usage()
    assert_billed_exactly([row.request_id for row in rows], [*load.answered, r.json()["id"]],
                          unanswered_at_most=len(load.cut))
    assert all(row.status == 200 and row.documents == len(DOCS) for row in rows)
