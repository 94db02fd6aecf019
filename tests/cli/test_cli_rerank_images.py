"""`lastrank rerank` with images (--image documents, --query-image) on a tiny random jina-reranker-m0: the CLI
ranks exactly as the Python API with the same images, and bad image paths are a clear error (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lastrank.cli import main

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def m0(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m0")
    assert main(["make-checkpoint", str(folder / "c"), "--preset", "jina-reranker-m0-tiny", "--dtype", "float32"]) == 0
    return folder / "c"


def test_cli_images_rank_as_the_python_api(m0, tmp_path, capsys):
    from pathlib import Path

    from lastrank import Reranker

    paths = []
    for i, (w, h) in enumerate([(90, 60), (30, 200)]):
        paths.append(tmp_path / f"{i}.png")
        PIL.fromarray(np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    docs = tmp_path / "docs.txt"
    docs.write_text("green tea\ncoffee\n")
    capsys.readouterr()
    assert main(["rerank", "--model", str(m0), "--dtype", "float32", "--query", "tea", "--documents", str(docs),
                 "--image", str(paths[0]), "--image", str(paths[1]), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = Reranker(str(m0), dtype="float32").rerank("tea", ["green tea", "coffee", Path(paths[0]), Path(paths[1])])
    assert [(r["index"], r["document"]) for r in got] == [(r["index"], r["document"]) for r in want]
    assert [r["relevance_score"] for r in got] == pytest.approx([r["relevance_score"] for r in want], abs=1e-9)
    assert main(["rerank", "--model", str(m0), "--dtype", "float32", "--query-image", str(paths[0]),
                 "--image", str(paths[1])]) == 0


def test_cli_image_errors(m0, tmp_path, capsys):
    assert main(["rerank", "--model", str(m0), "--query", "q", "--image", str(tmp_path / "missing.png")]) == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "not.png").write_text("hello")
    assert main(["rerank", "--model", str(m0), "--query", "q", "--image", str(tmp_path / "not.png")]) == 2
    assert "not an image" in capsys.readouterr().err
    assert main(["rerank", "--model", str(m0), "--image", str(tmp_path / "not.png")]) == 2  # no query
    assert main(["rerank", "--model", str(m0), "--query", "q"]) == 2  # no documents
