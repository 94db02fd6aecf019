"""The catalogue page (/models, api/catalogue.py) in Debian's Chromium against a real `lastrank serve` of the
real all-MiniLM-L6-v2 and a tiny random-weight checkpoint, with `serve --reports` naming a folder of real
`lastrank eval` reports made here (a few queries of the bundled data sets, so it stays quick): the MiniLM's
and the served tiny model's, and one of another tiny folder this server does not serve.

Checked: the cards show what /v1/models says (family, score rule, context length, parameters, license), the
random-weights marker only where the model has random weights, the benchmark table shows each report's nDCG@10
as its report.json has it, a "not served" peer row, the compare view driven by the keyboard alone, no request
outside this server, and no horizontal scroll at phone width. Screenshot: docs/catalogue.png when
LASTRANK_SCREENSHOT_DIR=docs.
"""

from __future__ import annotations

import json

import httpx
import pytest
from support.playground_page import screenshot
from support.server_process import ServerProcess

from lastrank.cli import main
from lastrank.eval.data import BUNDLED_ROOT

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MINILM = "all-MiniLM-L6-v2"  # its served name
TINY = "jina-reranker-v3"  # the tiny checkpoint's served name (its family's public name)


def run_eval(model, dataset: str, out) -> dict:
    assert main(["eval", "--model", str(model), "--data", str(BUNDLED_ROOT / dataset), "--queries", "3",
                 "--top-k", "10", "--dtype", "float32", "--no-progress", "--out", str(out)]) == 0
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, make_tiny_checkpoint):
    """-> (url, key, {(model row, data set): nDCG@10 from its report.json})."""
    from lastrank.store import Store

    tmp = tmp_path_factory.mktemp("catalogue-serve")
    reports = tmp / "reports"
    tiny, other = make_tiny_checkpoint(), make_tiny_checkpoint(seed=1)
    expected = {}
    for name, model, dataset in [(MINILM, MODEL, "trec-dl-2019"), (MINILM, MODEL, "noveleval-2306"),
                                 (TINY, tiny, "trec-dl-2019"), (other.name, other, "trec-dl-2019")]:
        report = run_eval(model, dataset, reports / f"{name}-{dataset}")
        expected[(name, dataset)] = report["aggregate"]["reranked (given)"]["nDCG@10"]
    store = Store(tmp / "ledger.db")
    _, key = store.create_key("catalogue")
    store.close()
    srv = ServerProcess(MODEL, tmp / "ledger.db", tmp / "server.log",
                        extra=["--model", str(tiny), "--reports", str(reports)])
    try:
        srv.start()
        yield srv.url, key, expected
    finally:
        srv.stop()


def open_catalogue(new_page, url: str, key: str, **context_options):
    p = new_page(url, **context_options)
    page = p.page
    page.goto(url + "/models")
    page.locator("#api-key").wait_for(state="visible")  # keys are on: /v1/models said 401
    page.fill("#api-key", key)
    page.press("#api-key", "Enter")
    page.wait_for_function("() => document.body.dataset.loaded === 'true'")
    return p, page


def test_catalogue_shows_models_reports_and_compares_by_keyboard(new_page, catalogue, tmp_path):
    url, key, expected = catalogue
    p, page = open_catalogue(new_page, url, key, viewport={"width": 1200, "height": 900})
    api = {m["id"]: m for m in httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]}

    minilm = page.locator(f"#model-{MINILM}").inner_text()
    for fact in ("bi-encoder", "cosine, in [-1, 1]", f"{api[MINILM]['context_length']} tokens", "22.7M", "apache-2.0",
                 "Languages\nen"):
        assert fact in minilm, fact
    assert api[MINILM]["license"] == "apache-2.0" and api[MINILM]["parameters"] == 22_713_728
    assert "random weights" not in minilm and api[MINILM]["random_weights"] is False
    tiny = page.locator(f"#model-{TINY}").inner_text()
    assert "random weights" in tiny and api[TINY]["random_weights"] is True
    assert "jina-v3" in tiny and "License" not in tiny  # its folder says no license: none is shown

    # the benchmark table: each report's nDCG@10 as report.json has it, the peer this server does not serve
    rows = page.eval_on_selector_all("#bench-body tr", """rows => rows.map(r => ({
        name: r.querySelector('th').innerText, cells: Array.from(r.querySelectorAll('td')).map(td => td.innerText)}))""")
    heads = page.eval_on_selector_all("#bench-head th", "ths => ths.map(th => th.innerText)")
    assert heads[1:] == ["Model", "nDCG@10 noveleval-2306", "nDCG@10 trec-dl-2019"]
    by_name = {r["name"].split(" ")[0].split("\n")[0]: r for r in rows}
    assert list(by_name)[:2] == [MINILM, TINY]  # served first
    for (name, dataset), value in expected.items():
        column = heads.index(f"nDCG@10 {dataset}") - 1  # -1: the row's name is a th
        assert by_name[name]["cells"][column] == f"{value:.4f}", (name, dataset)
    peer = next(r for n, r in by_name.items() if n not in (MINILM, TINY))
    assert "not served" in peer["name"] and "random weights" in peer["name"]
    assert "random weights" not in by_name[MINILM]["name"] and "random weights" in by_name[TINY]["name"]

    # compare: tick the MiniLM and the tiny model with Space, Tab to "Compare selected", Enter
    page.locator("#pick-0").focus()
    page.keyboard.press("Space")
    page.keyboard.press("Tab")
    page.keyboard.press("Space")
    for _ in range(5):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == "compare-selected":
            break
    page.keyboard.press("Enter")
    page.locator("#compare").wait_for(state="visible")
    assert page.evaluate("() => document.activeElement.id") == "compare-title"  # focus moved to the result
    compared = page.eval_on_selector_all("#compare-head th", "ths => ths.map(th => th.innerText)")
    assert [c.split("\n")[0].split(" ")[0] for c in compared[1:]] == [MINILM, TINY]
    lines = {r[0]: r[1:] for r in page.eval_on_selector_all("#compare-body tr", """rows => rows.map(r =>
        Array.from(r.children).map(c => c.innerText))""")}
    assert lines["Family"] == ["bi-encoder", "jina-v3"]
    assert lines["nDCG@10 trec-dl-2019"] == [f"{expected[(MINILM, 'trec-dl-2019')]:.4f}",
                                              f"{expected[(TINY, 'trec-dl-2019')]:.4f}"]
    assert lines["nDCG@10 noveleval-2306"] == [f"{expected[(MINILM, 'noveleval-2306')]:.4f}", "–"]
    screenshot(page, tmp_path, "catalogue.png")
    p.assert_only_this_server()


def test_catalogue_fits_a_phone(new_page, catalogue):
    url, key, _ = catalogue
    p, page = open_catalogue(new_page, url, key, viewport={"width": 390, "height": 800}, is_mobile=True)
    page.locator("#compare-all").click()
    page.locator("#compare").wait_for(state="visible")
    # wide tables scroll inside their own box; the page itself never scrolls sideways
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    p.assert_only_this_server()


ROUTER_CONFIG = """
[[models]]
name = "rerank"
policy = "priority"

[[models.providers]]
name = "minilm-here"
dialect = "lastrank"
base_url = "{up}"
api_key_env = "CATALOGUE_UPSTREAM_KEY"
model = "all-MiniLM-L6-v2"
cost_per_1k_docs = 0.002

[[models.providers]]
name = "offline"
dialect = "lastrank"
base_url = "{down}"
score = "cosine"
timeout_s = 1
"""


@pytest.fixture(scope="module")
def routed(catalogue, tmp_path_factory):
    """-> (url, key): `lastrank serve --config` with one model over two providers: the MiniLM server above
    (answering) and a port nothing listens on (its breaker starts open)."""
    from support.server_process import free_port

    from lastrank.store import Store

    up_url, up_key, _ = catalogue
    tmp = tmp_path_factory.mktemp("catalogue-router")
    config = tmp / "router.toml"
    config.write_text(ROUTER_CONFIG.format(up=up_url, down=f"http://127.0.0.1:{free_port()}"), encoding="utf-8")
    store = Store(tmp / "ledger.db")
    _, key = store.create_key("catalogue-router")
    store.close()
    srv = ServerProcess(MODEL, tmp / "ledger.db", tmp / "server.log", extra=["--config", str(config)])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CATALOGUE_UPSTREAM_KEY", up_key)
        try:
            srv.start()
            yield srv.url, key
        finally:
            srv.stop()


def test_a_routed_models_providers_and_their_health(new_page, routed, tmp_path):
    url, key = routed
    p, page = open_catalogue(new_page, url, key, viewport={"width": 1000, "height": 700})
    api = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"][0]
    states = {pr["name"]: pr["health"]["state"] for pr in api["providers"]}
    assert states == {"minilm-here": "closed", "offline": "open"}
    card = page.locator("#model-rerank")
    assert "priority" in card.inner_text()
    rows = card.locator("table.providers tbody tr")
    shown = {r[0].split(" ")[0]: r for r in rows.evaluate_all("rows => rows.map(r => Array.from(r.children).map(c => c.innerText))")}
    assert shown["minilm-here"][:5] == ["minilm-here (all-MiniLM-L6-v2)", "lastrank", "healthy", "cosine", "$0.0020"]
    assert shown["offline"][:5] == ["offline", "lastrank", "down (circuit open)", "cosine", "$0"]
    # no report and one model: nothing to compare, the page says how to register reports instead
    assert "--reports FILE_OR_FOLDER" in page.locator("#bench-status").inner_text()
    assert not page.locator("#compare-actions").is_visible() and not page.locator("#bench").is_visible()
    screenshot(page, tmp_path, "catalogue-router.png")
    p.assert_only_this_server()
