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
    # "tiny" is the old name of jina-v3-tiny, kept for the commands people already run: the same folder
    assert main(["make-checkpoint", str(tmp_path / "n"), "--preset", "jina-v3-tiny", "--seed", "3"]) == 0
    assert (tmp_path / "n" / "model.safetensors").read_bytes() == (tmp_path / "c" / "model.safetensors").read_bytes()
    assert "--preset jina-v3-tiny" in (tmp_path / "c" / "RANDOM_WEIGHTS.txt").read_text()


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


@pytest.mark.parametrize(("name", "content"), [("empty.txt", ""), ("blank.txt", "\n  \n\n"), ("empty.jsonl", "\n"),
                                               ("empty.json", "[]"), ("nothing.json", "")])
def test_empty_documents_file_is_a_clear_error(tiny_checkpoint, tmp_path, capsys, name, content):
    path = tmp_path / name
    path.write_text(content)
    assert main(["rerank", "--model", str(tiny_checkpoint), "--query", "q", "--documents", str(path)]) == 2
    captured = capsys.readouterr()
    assert "no documents" in captured.err and name in captured.err and captured.out == ""


def test_json_array_file_is_read_as_documents(tiny_checkpoint, tmp_path, capsys):
    path = tmp_path / "docs.json"
    path.write_text(json.dumps(["plain string", {"text": "object text", "id": 7}, "third"]))
    assert main(["rerank", "--model", str(tiny_checkpoint), "--query", "q", "--documents", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["index"]: r["document"] for r in out} == {0: "plain string", 1: "object text", 2: "third"}

    path.write_text(json.dumps({"text": "one object"}))
    assert main(["rerank", "--model", str(tiny_checkpoint), "--query", "q", "--documents", str(path)]) == 2
    assert "expected a JSON array" in capsys.readouterr().err
    path.write_text(json.dumps(["ok", {"title": "no text"}]))
    assert main(["rerank", "--model", str(tiny_checkpoint), "--query", "q", "--documents", str(path)]) == 2
    assert "docs.json[1]" in capsys.readouterr().err


def test_blank_lines_keep_index_equal_to_line_number(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    path = tmp_path / "docs.txt"
    path.write_text("first line\n\nthird line\n   \nfifth line\n\n\n")  # trailing blank lines shift nothing
    assert main(["rerank", "--model", str(tiny_checkpoint), "--query", "q", "--documents", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    by_index = {r["index"]: r["document"] for r in json.loads(captured.out)}
    assert by_index == {0: "first line", 1: "", 2: "third line", 3: "   ", 4: "fifth line"}
    assert "2 blank line(s) ranked as empty documents" in captured.err

    monkeypatch.setattr("sys.stdin", io.StringIO("one\n\nthree\n"))  # standard input follows the same rule
    assert main(["rerank", "--model", str(tiny_checkpoint), "--query", "q", "--documents", "-", "--json"]) == 0
    assert {r["index"]: r["document"] for r in json.loads(capsys.readouterr().out)}[2] == "three"


def test_random_checkpoint_is_flagged_and_a_real_looking_one_is_not(tiny_checkpoint, tmp_path, capsys):
    import shutil

    docs = tmp_path / "docs.txt"
    docs.write_text("Fleas live about a year.\nParis is in France.\n")
    assert main(["rerank", "--model", str(tiny_checkpoint), "--query", "q", "--documents", str(docs)]) == 0
    assert "random weights" in capsys.readouterr().err

    # the same weights without the markers (as a trained model's folder would be): no warning
    plain = tmp_path / "plain"
    shutil.copytree(tiny_checkpoint, plain)
    (plain / "RANDOM_WEIGHTS.txt").unlink()
    cfg = json.loads((plain / "config.json").read_text())
    cfg.pop("lastrank_random_weights")
    cfg.pop("lastrank_notice")
    (plain / "config.json").write_text(json.dumps(cfg))
    assert main(["rerank", "--model", str(plain), "--query", "q", "--documents", str(docs)]) == 0
    assert "random weights" not in capsys.readouterr().err


# Bad input at the edges: one `lastrank: error:` line each, never a traceback, and before the model loads.


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lastrank: error: "), err
    return err[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if a model is loaded: these errors must come before it."""
    import lastrank.reranker

    def refuse(*a, **kw):
        raise AssertionError("the model was loaded before the input was checked")

    # where Reranker looks the loader up (lastrank/reranker.py imports it by name)
    monkeypatch.setattr(lastrank.reranker, "load_backend", refuse)


def test_a_documents_file_that_is_not_utf8_is_one_line(tiny_checkpoint, tmp_path, capsys, no_model_load):
    path = tmp_path / "latin1.txt"
    path.write_bytes("ok\ncafé au lait\n".encode("latin-1"))
    assert main(["rerank", "--model", str(tiny_checkpoint), "--query", "q", "--documents", str(path)]) == 2
    line = one_error_line(capsys)
    assert "latin1.txt: not UTF-8 text (byte 0xe9 on line 2)" in line


def test_stdin_that_is_not_utf8_is_one_line_whatever_the_locale(tiny_checkpoint, capsys, monkeypatch, no_model_load):
    # a C locale reads such bytes as lone surrogates (surrogateescape), which no tokenizer takes
    stdin = io.TextIOWrapper(io.BytesIO("ok\ncafé\n".encode("latin-1")), encoding="utf-8", errors="surrogateescape")
    monkeypatch.setattr("sys.stdin", stdin)
    assert main(["rerank", "--model", str(tiny_checkpoint), "--query", "q", "--documents", "-"]) == 2
    assert "standard input: not UTF-8 text (byte 0xe9 on line 2)" in one_error_line(capsys)


def test_lone_surrogates_in_json_or_argv_are_one_line(tiny_checkpoint, tmp_path, capsys, no_model_load):
    path = tmp_path / "docs.jsonl"
    path.write_text('"fine"\n{"text": "caf\\udce9"}\n')  # a JSON escape that is no character
    assert main(["rerank", "--model", str(tiny_checkpoint), "--query", "q", "--documents", str(path)]) == 2
    assert "docs.jsonl:2 is not valid Unicode" in one_error_line(capsys)
    path = tmp_path / "docs.txt"
    path.write_text("fine\n")
    assert main(["rerank", "--model", str(tiny_checkpoint), "--query", "caf\udce9", "--documents", str(path)]) == 2
    assert "--query is not valid Unicode" in one_error_line(capsys)


def test_an_unknown_device_is_one_line_before_the_model_loads(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from lastrank.model import jina

    path = tmp_path / "docs.txt"
    path.write_text("fine\n")
    loads = []  # the weights are read only after the device is checked (the Jina V3 loader's reader)
    original = jina.read_safetensors
    monkeypatch.setattr(jina, "read_safetensors", lambda *a, **kw: loads.append(1) or original(*a, **kw))
    assert main(["rerank", "--model", str(tiny_checkpoint), "--query", "q", "--documents", str(path),
                 "--device", "gpu"]) == 2
    assert "--device: not a device: 'gpu' (cpu, cuda, cuda:N, mps or auto)" in one_error_line(capsys)
    assert loads == []


def test_the_python_api_refuses_an_unknown_device_before_reading_weights(tiny_checkpoint, monkeypatch):
    import torch

    from lastrank import Reranker
    from lastrank.errors import InvalidRequestError, ModelNotAvailableError
    from lastrank.model import jina

    monkeypatch.setattr(jina, "read_safetensors", lambda *a, **kw: pytest.fail("weights read"))
    for bad in ("gpu", "meta", "cuda:x"):
        with pytest.raises(InvalidRequestError, match="device"):
            Reranker(str(tiny_checkpoint), device=bad)
    if not torch.cuda.is_available():
        with pytest.raises(ModelNotAvailableError, match="CUDA is not available"):
            Reranker(str(tiny_checkpoint), device="cuda:0")


def test_a_bad_lastrank_environment_variable_is_one_line_not_a_traceback(capsys, monkeypatch):
    monkeypatch.setenv("LASTRANK_MAX_DOCUMENTS", "lots")
    for argv in (["--version"], ["keys", "list"], ["serve", "--port", "0"]):
        assert main(argv) == 2
        assert "$LASTRANK_MAX_DOCUMENTS" in one_error_line(capsys)


def test_python_api_refuses_lone_surrogates_naming_the_item(tiny_reranker):
    from lastrank.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match=r"documents\[1\] is not valid Unicode.*U\+DCE9 at character 3"):
        tiny_reranker.rerank("q", ["fine", "caf\udce9"])
    with pytest.raises(InvalidRequestError, match="query is not valid Unicode"):
        tiny_reranker.rerank("\ud800", ["fine"])
    with pytest.raises(InvalidRequestError, match="instruction is not valid Unicode"):
        tiny_reranker.rerank("q", ["fine"], instruction="x\udfff")
    assert tiny_reranker.rerank("café ❤️", ["fine"])  # real non-ASCII text is fine


@pytest.mark.parametrize("argv, says", [
    (["rerank", "--bogus"], "unrecognized arguments: --bogus (see 'lastrank rerank --help')"),
    ([], "the following arguments are required: COMMAND (see 'lastrank --help')"),
    (["rerank", "--model", "m", "--query", "q", "--top-n", "many"], "argument --top-n: invalid int value: 'many'"),
    (["keys", "revoke"], "the following arguments are required"),
    (["bench", "--family", "nope"], "argument --family: invalid choice: 'nope'"),
])
def test_a_usage_error_is_one_line_naming_the_commands_help(argv, says, capsys):
    """argparse's own errors (unknown flag, missing or malformed argument) are one `lastrank: error:` line too:
    argparse printed its usage (several lines for rerank) before `lastrank rerank: error: ...`."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert says in one_error_line(capsys)
