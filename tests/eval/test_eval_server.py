"""Server mode: `lastrank eval --server` against a real `lastrank serve` process gives the in-process
results (same tiny checkpoint, float32, one block per query)."""

from __future__ import annotations

import json

import pytest
from server_process import served_with_key

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
