import io
import json

import pytest

from lastrank.cli import main


def test_make_checkpoint_writes_official_layout(tmp_path, capsys):
    assert main(["make-checkpoint", str(tmp_path / "c"), "--preset", "tiny", "--seed", "3"]) == 0
    captured = capsys.readouterr()
    assert "meaningless" in captured.err
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "added_tokens.json",
              "special_tokens_map.json"):
        assert (tmp_path / "c" / f).is_file(), f
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["architectures"] == ["JinaForRanking"] and cfg["model_type"] == "qwen3"
    added = json.loads((tmp_path / "c" / "added_tokens.json").read_text())
    assert added["<|embed_token|>"] == 151670 and added["<|rerank_token|>"] == 151671


def test_rerank_txt_and_json_output(tiny_checkpoint, tiny_reranker, tmp_path, capsys):
    docs = ["Fleas live about a year.", "Paris is in France.", "A flea is an insect."]
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(docs) + "\n\n")  # blank lines are skipped
    assert main(["rerank", "--model", str(tiny_checkpoint), "--dtype", "float32", "--query", "flea life",
                 "--documents", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = tiny_reranker.rerank("flea life", docs)
    assert [r["index"] for r in out] == [r["index"] for r in expected]
    assert [r["relevance_score"] for r in out] == pytest.approx([r["relevance_score"] for r in expected], abs=1e-6)

    assert main(["rerank", "--model", str(tiny_checkpoint), "--dtype", "float32", "--query", "flea life",
                 "--documents", str(path), "--top-n", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].lstrip().startswith("1")
    assert f"[{expected[0]['index']}]" in lines[0]


def test_rerank_jsonl_and_stdin(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    path = tmp_path / "docs.jsonl"
    path.write_text('"plain string"\n{"text": "object text", "id": 7}\n')
    assert main(["rerank", "--model", str(tiny_checkpoint), "--query", "q", "--documents", str(path), "--json"]) == 0
    assert sorted(r["document"] for r in json.loads(capsys.readouterr().out)) == ["object text", "plain string"]

    monkeypatch.setattr("sys.stdin", io.StringIO("one\ntwo\nthree\n"))
    assert main(["rerank", "--model", str(tiny_checkpoint), "--query", "q", "--documents", "-", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_bad_documents_file_is_a_clear_error(tiny_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 5}\n')
    assert main(["rerank", "--model", str(tiny_checkpoint), "--query", "q", "--documents", str(bad)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    assert main(["rerank", "--model", str(tiny_checkpoint), "--query", "q", "--documents", str(tmp_path / "none.txt")]) == 2
    assert "not found" in capsys.readouterr().err
