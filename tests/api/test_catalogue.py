"""The catalogue (api/catalogue.py): /v1/models' facts from a model's folder (parameters, languages, license),
serve --reports read and matched to served models, GET /v1/benchmarks, and GET /models (CSP, no outside URL).

The page's behaviour in a real browser: tests/e2e/test_catalogue_browser.py."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from support.fake_scheduler import FakeScheduler

from lastrank.api.app import create_app
from lastrank.api.catalogue import model_card
from lastrank.api.models import ServedModel
from lastrank.api.settings import ServerSettings
from lastrank.errors import LastrankError
from lastrank.model.packaged import packaged_folder

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def eval_report(model: str, dataset: str, ndcg: float, random_weights=False) -> dict:
    """The parts of a `lastrank eval` report.json (eval/report.py build_report) the catalogue reads."""
    return {"config": {"model": model, "dataset": dataset, "orders": ["given"]},
            "model": {"family": "bi-encoder", "score": "cosine", "random_weights": random_weights},
            "measures": {"nDCG@10": "nDCG@10"},
            "aggregate": {"first stage": {"nDCG@10": 0.5}, "reranked (given)": {"nDCG@10": ndcg}}}


def bench_file(checkpoint: str, tok_s: float) -> dict:
    """The parts of `lastrank bench --json` (cli/commands/bench.py bench) the catalogue reads."""
    return {"model": {"id": checkpoint, "family": "jina-v3", "random_weights": True},
            "machine": {"cpu": "Test CPU", "dtype": "bfloat16", "threads": 1, "checkpoint": checkpoint,
                        "loadavg_at_start": [1.5, 1.0, 1.0]},
            "cases": {"trec": {"label": "trec (1 query, 100 docs)", "lastrank_tok_s": tok_s}}}


def write(path, data) -> str:
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


@pytest.fixture
def served(store, start_client):
    """make(model_id, backend_path, **settings) -> a started TestClient serving one model (a fake scheduler)
    whose backend says it was loaded from `backend_path`."""
    def make(model_id: str, backend_path=None, random_weights=False, **overrides):
        settings = ServerSettings(model=(model_id,), **overrides)
        backend = SimpleNamespace(path=backend_path, random_weights=random_weights)
        model = ServedModel(name="minilm" if model_id == MINILM else "tiny", model_id=model_id,
                            scheduler=FakeScheduler(), backend=backend)
        return start_client(create_app(settings, store, models=[model]))

    return make


def test_model_card_of_the_packaged_minilm():
    card = model_card(packaged_folder(MINILM))
    # its README's front matter and its safetensors header (22.7M parameters, as its model card says)
    assert card == {"parameters": 22_713_728, "languages": ["en"], "license": "apache-2.0"}


def test_model_card_says_only_what_the_folder_says(tmp_path):
    from safetensors.numpy import save_file

    assert model_card(None) == {} and model_card(tmp_path) == {}
    save_file({"a": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float32)}, str(tmp_path / "model.safetensors"))
    assert model_card(tmp_path) == {"parameters": 17}
    (tmp_path / "README.md").write_text("---\nlanguage:\n- en\n- de\n---\n# a model\n", encoding="utf-8")
    assert model_card(tmp_path) == {"parameters": 17, "languages": ["en", "de"]}  # no license: none shown


def test_v1_models_shows_the_folders_facts(served):
    client = served(MINILM, packaged_folder(MINILM))
    entry = client.get("/v1/models").json()["data"][0]
    assert entry["parameters"] == 22_713_728 and entry["languages"] == ["en"] and entry["license"] == "apache-2.0"
    assert entry["family"] == "jina-v3" and entry["context_length"] == 131072  # the fake's capabilities, as before


def test_v1_models_leaves_out_what_the_folder_does_not_say(served, tmp_path):
    entry = served("/ckpt/tiny", tmp_path).get("/v1/models").json()["data"][0]
    assert "parameters" not in entry and "languages" not in entry and "license" not in entry


def test_benchmarks_match_reports_to_served_models(served, tmp_path):
    folder = tmp_path / "reports"
    (folder / "eval-a").mkdir(parents=True)
    write(folder / "eval-a" / "report.json", eval_report(MINILM, "trec-dl-2019", 0.6871))
    write(folder / "eval-b.json", eval_report("minilm", "scifact", 0.6412))  # a short name of the served model
    write(folder / "peer.json", eval_report("BAAI/bge-reranker-base", "trec-dl-2019", 0.7012))
    write(folder / "notes.json", {"not": "a report"})  # in a folder: skipped
    bench = write(tmp_path / "bench.json", bench_file("/somewhere/jina-v3-random", 1234.5))
    client = served(MINILM, packaged_folder(MINILM), reports=(str(folder), bench))
    body = client.get("/v1/benchmarks").json()
    assert body["datasets"] == ["scifact", "trec-dl-2019"]
    assert body["cases"] == ["trec (1 query, 100 docs)"]
    rows = {r["model"]: r for r in body["data"]}
    assert [r["model"] for r in body["data"]] == ["minilm", "bge-reranker-base", "jina-v3-random"]  # served first
    assert rows["minilm"]["served"] is True and rows["minilm"]["random_weights"] is False
    assert rows["minilm"]["ndcg_at_10"] == {"trec-dl-2019": 0.6871, "scifact": 0.6412}
    assert rows["bge-reranker-base"]["served"] is False
    assert rows["bge-reranker-base"]["ndcg_at_10"] == {"trec-dl-2019": 0.7012}
    random = rows["jina-v3-random"]
    assert random["served"] is False and random["random_weights"] is True
    assert random["tokens_per_s"] == {"trec (1 query, 100 docs)": 1234.5}
    assert random["machines"] == ["Test CPU, bfloat16, 1 thread(s), load average 1.5"]


def test_a_report_for_the_served_folder_matches_by_path(served, tmp_path):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    report = write(tmp_path / "r.json", eval_report(str(checkpoint.resolve()), "nfcorpus", 0.31))
    client = served(str(tmp_path / "." / "ckpt"), checkpoint, reports=(report,))
    rows = client.get("/v1/benchmarks").json()["data"]
    assert [(r["model"], r["served"], r["ndcg_at_10"]) for r in rows] == [("tiny", True, {"nfcorpus": 0.31})]


def test_an_eval_against_a_server_matches_by_its_served_name(served, tmp_path):
    report = write(tmp_path / "r.json", eval_report("server:http://127.0.0.1:9/#minilm", "scifact", 0.64))
    rows = served(MINILM, None, reports=(report,)).get("/v1/benchmarks").json()["data"]
    assert [(r["model"], r["served"]) for r in rows] == [("minilm", True)]


def test_benchmarks_need_a_key_like_v1_models(served, store, tmp_path):
    _, key = store.create_key("catalogue")
    client = served(MINILM, None)
    assert client.get("/v1/benchmarks").status_code == 401
    resp = client.get("/v1/benchmarks", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200 and resp.json()["data"][0]["model"] == "minilm"


def test_no_reports_lists_the_served_models_alone(client):
    body = client.get("/v1/benchmarks").json()
    assert body["datasets"] == [] and body["cases"] == []
    assert [(r["model"], r["served"], r["ndcg_at_10"]) for r in body["data"]] == [("jina-reranker-v3", True, {})]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a readable JSON file"),
    (json.dumps({"config": {}}), "neither a `lastrank eval` report.json nor"),
    (json.dumps({**eval_report(MINILM, "x", 0.5), "aggregate": {"first stage": {"nDCG@10": 0.5}}}),
     "no reranked nDCG@10"),
])
def test_a_named_file_that_is_not_a_report_stops_the_start(store, tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LastrankError, match=re.escape(message)):
        create_app(ServerSettings(model=("/ckpt/tiny",), reports=(str(path),)), store, scheduler=FakeScheduler())
    with pytest.raises(LastrankError, match="no such file or folder"):
        create_app(ServerSettings(model=("/ckpt/tiny",), reports=(str(tmp_path / "missing"),)), store,
                   scheduler=FakeScheduler())


URL_ATTR = re.compile(r"""(?:src|href|action)\s*=\s*["']([^"']*)["']""", re.I)


def test_models_page_is_self_contained_and_locked_down(client):
    resp = client.get("/models")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    html = resp.text
    assert "<title>lastrank models</title>" in html
    assert '"v1/models"' in html and '"v1/benchmarks"' in html
    # links only to this server (the playground, relatively) and inline data; no absolute URL anywhere
    assert sorted(URL_ATTR.findall(html)) == ["data:,", "playground"]
    assert re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I) == []
    assert re.findall(r"\bon[a-z]+\s*=", html) == []  # no inline handlers: the CSP would block them anyway
    csp = dict(part.strip().split(" ", 1) for part in resp.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["connect-src"] == "'self'"
    assert csp["script-src"].startswith("'sha256-") and "unsafe" not in resp.headers["content-security-policy"]


def test_playground_and_root_link_to_the_catalogue(client):
    assert 'href="models"' in client.get("/playground").text
    assert client.get("/").json()["catalogue"] == "/models"


def test_the_catalogue_routes_are_counted_under_their_own_names(client):
    # /metrics names every route this server has; the catalogue's were counted as "other", like a 404 probe
    client.get("/models")
    client.get("/v1/benchmarks")
    metrics = client.get("/metrics").text
    assert 'lastrank_requests_total{route="/models",status="200"} 1.0' in metrics
    assert 'lastrank_requests_total{route="/v1/benchmarks",status="200"} 1.0' in metrics
