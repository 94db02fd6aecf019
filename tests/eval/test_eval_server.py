"""Server mode: `lastrank eval --server` against a real `lastrank serve` process gives the in-process
results (same tiny checkpoint, float32, one block per query)."""

from __future__ import annotations

import json

import pytest
from support.server_process import served_with_key

from lastrank.cli import main


@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory):
    with served_with_key(tiny_checkpoint, tmp_path_factory.mktemp("eval-serve")) as served:
        yield served


def test_server_mode_equals_in_process(served, data_root, tiny_checkpoint, tmp_path):
    url, key = served
    common = ["--data", str(data_root / "noveleval-2306"), "--queries", "3", "--top-k", "5", "--order", "random",
              "--seed", "3", "--no-progress"]
    assert main(["eval", "--server", url, "--api-key", key, "--out", str(tmp_path / "srv"), *common]) == 0
    assert main(["eval", "--model", str(tiny_checkpoint), "--dtype", "float32", "--out", str(tmp_path / "local"),
                 *common]) == 0
    srv = json.loads((tmp_path / "srv" / "report.json").read_text())
    local = json.loads((tmp_path / "local" / "report.json").read_text())
    assert srv["config"]["model"] == f"server:{url}"
    assert srv["timings"]["reranked_now"] == 3
    for qid, s in srv["rankings"]["random"].items():
        lo = local["rankings"]["random"][qid]
        assert s["input"] == lo["input"]  # the same seeded order was sent
        assert [d for d, _ in s["ranking"]] == [d for d, _ in lo["ranking"]]
        assert [v for _, v in s["ranking"]] == pytest.approx([v for _, v in lo["ranking"]], abs=1e-5)
    assert srv["aggregate"] == local["aggregate"]


def test_server_mode_wrong_key_is_a_clean_error(served, data_root, tmp_path, capsys):
    url, _ = served
    rc = main(["eval", "--server", url, "--api-key", "lr-wrong", "--data", str(data_root / "noveleval-2306"),
               "--queries", "1", "--top-k", "3", "--out", str(tmp_path / "x"), "--no-progress"])
    assert rc == 2
    assert "lastrank: error:" in capsys.readouterr().err


def test_served_model_names_the_model(served, data_root, tmp_path, capsys):
    """--served-model sends `model` with every request (what a server of several models needs) and picks that
    model's /v1/models entry for the report; a name the server does not serve is a clean error naming it."""
    import httpx

    url, key = served
    name = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"][0]["id"]
    common = ["--data", str(data_root / "noveleval-2306"), "--queries", "2", "--top-k", "4", "--no-progress"]
    assert main(["eval", "--server", url, "--api-key", key, "--out", str(tmp_path / "plain"), *common]) == 0
    assert main(["eval", "--server", url, "--api-key", key, "--served-model", name, "--out", str(tmp_path / "named"),
                 *common]) == 0
    plain = json.loads((tmp_path / "plain" / "report.json").read_text())
    named = json.loads((tmp_path / "named" / "report.json").read_text())
    assert named["config"]["model"] == f"server:{url}#{name}" and named["model"]["served_model"] == name
    assert named["rankings"] == plain["rankings"]
    capsys.readouterr()
    rc = main(["eval", "--server", url, "--api-key", key, "--served-model", "no-such-model", "--out",
               str(tmp_path / "wrong"), *common])
    assert rc == 2 and "no-such-model" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["eval", "--model", "x", "--served-model", name, *common]) == 2
    assert "--served-model needs --server" in capsys.readouterr().err
