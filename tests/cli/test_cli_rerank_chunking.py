"""`lastrank rerank --chunking chunk [--spans]`: the same results as Reranker.rerank in chunk mode."""

import json

from lastrank.cli import main

LONG = "Fleas are small insects. " * 20 + "\n\nA flea lives about a year. " * 3


def test_rerank_chunk_mode_with_spans(tiny_checkpoint, tiny_reranker, tmp_path, capsys):
    path = tmp_path / "docs.json"
    docs = ["Paris is in France.", LONG]
    path.write_text(json.dumps(docs))
    argv = ["rerank", "--model", str(tiny_checkpoint), "--dtype", "float32", "--query", "flea life",
            "--documents", str(path), "--max-doc-length", "16", "--chunking", "chunk", "--chunk-overlap", "4",
            "--spans"]
    assert main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = tiny_reranker.rerank("flea life", docs, max_doc_length=16, chunking="chunk", chunk_overlap=4,
                                    return_spans=True)
    assert [(r["index"], r["relevance_score"], r["span"]) for r in out] == \
        [(r["index"], r["relevance_score"], r["span"]) for r in expected]
    assert next(r for r in out if r["index"] == 0)["span"] == [0, len(docs[0])]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    start, end = expected[0]["span"]
    assert f"[{expected[0]['index']} {start}-{end}]" in lines[0]


def test_chunk_options_need_chunk_mode(tiny_checkpoint, tmp_path, capsys):
    path = tmp_path / "d.txt"
    path.write_text("a\nb\n")
    assert main(["rerank", "--model", str(tiny_checkpoint), "--query", "q", "--documents", str(path), "--spans"]) == 2
    assert "need --chunking chunk" in capsys.readouterr().err
