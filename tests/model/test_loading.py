import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from lastrank.errors import ModelNotAvailableError
from lastrank.model.jina import load_jina_v3
from lastrank.model.loading import parse_dtype
from lastrank.model.resolve import resolve_checkpoint


def test_folder_resolves_and_loads_in_requested_dtype(tiny_checkpoint):
    assert resolve_checkpoint(str(tiny_checkpoint)) == tiny_checkpoint
    for name, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        model = load_jina_v3(tiny_checkpoint, torch.device("cpu"), parse_dtype(name))
        assert {p.dtype for p in model.parameters()} == {dtype}
        assert not any(p.requires_grad for p in model.parameters())
    # projector widths come from the tensors: hidden 64 -> 32 -> 512
    assert model.projector[0].weight.shape == (32, 64) and model.projector[2].weight.shape == (512, 32)


def test_loaded_weights_are_the_checkpoints(tiny_checkpoint):
    model = load_jina_v3(tiny_checkpoint, torch.device("cpu"), torch.bfloat16)
    on_disk = load_file(str(tiny_checkpoint / "model.safetensors"))
    state = model.state_dict()
    assert set(state) == set(on_disk)
    for k, v in on_disk.items():
        assert torch.equal(state[k], v), k


def test_missing_files_name_what_is_missing(tmp_path, tiny_checkpoint):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "model.safetensors").unlink()
    from lastrank.families import load_backend

    # the folder resolves (it has a config.json); the family's own check names the missing file
    assert resolve_checkpoint(str(folder)) == folder
    with pytest.raises(ModelNotAvailableError, match="jina-reranker-v3 checkpoint folder: missing model.safetensors"):
        load_backend(str(folder))
    (folder / "config.json").unlink()
    with pytest.raises(ModelNotAvailableError, match="no config.json"):
        resolve_checkpoint(str(folder))
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "nope" / "deeper"))


def test_wrong_tensors_are_a_clear_error(tmp_path, tiny_checkpoint):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    sd = load_file(str(folder / "model.safetensors"))
    sd.pop("model.layers.1.mlp.up_proj.weight")
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()  # tied copy: tolerated and dropped
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(ModelNotAvailableError, match="up_proj"):
        load_jina_v3(folder, torch.device("cpu"), torch.float32)
    del sd["projector.2.weight"]
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(ModelNotAvailableError, match="projector.2.weight"):
        load_jina_v3(folder, torch.device("cpu"), torch.float32)


def test_unknown_dtype():
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype("int3")


def _run_cli(args, env_updates, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), **env_updates)
    docs = tmp_path / "docs.txt"
    docs.write_text("a\nb\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "lastrank", "rerank", "--query", "q", "--documents", str(docs), *args],
                          env=env, capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - start


def test_hub_id_offline_fails_fast_and_says_what_to_do(tmp_path):
    proc, elapsed = _run_cli(["--model", "jinaai/jina-reranker-v3"], {"HF_HUB_OFFLINE": "1"}, tmp_path)
    assert proc.returncode == 2
    err = proc.stderr
    assert "jinaai/jina-reranker-v3" in err and str(tmp_path / "hf") in err and "--model /path/to" in err
    assert "Traceback" not in err
    assert elapsed < 30  # hang guard only: a hub call that is not short-circuited hangs ~48 s here


def test_unreachable_hub_fails_fast(tmp_path):
    with socket.socket() as s:  # a loopback port with nothing listening: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, elapsed = _run_cli(["--model", "jinaai/jina-reranker-v3"], {"HF_ENDPOINT": f"http://127.0.0.1:{port}"}, tmp_path)
    assert proc.returncode == 2
    assert "not reachable" in proc.stderr and "jinaai/jina-reranker-v3" in proc.stderr
    assert elapsed < 30


def test_cached_hub_copy_is_used_offline(tmp_path, tiny_checkpoint):
    # Lay the checkpoint out as huggingface_hub's cache does; offline resolution must find it.
    repo = tmp_path / "hf" / "hub" / "models--jinaai--jina-reranker-v3"
    snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_checkpoint, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    proc, _ = _run_cli(["--model", "jinaai/jina-reranker-v3", "--json"], {"HF_HUB_OFFLINE": "1"}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["index"] for r in json.loads(proc.stdout)) == [0, 1]


@pytest.mark.parametrize("threads", [1, 3])
def test_parallel_piecewise_reads_give_the_checkpoints_bytes(tiny_checkpoint, monkeypatch, threads):
    """read_safetensors splits tensors into pieces read by several threads: every byte must land in place,
    also on the seek + read fallback for systems without positional reads, and when converting dtypes."""
    from lastrank.model import weights

    monkeypatch.setattr(weights, "READ_PIECE_BYTES", 4096)  # tiny pieces: most tensors span several
    on_disk = load_file(str(tiny_checkpoint / "model.safetensors"))
    for dtype in (torch.bfloat16, torch.float32):
        got = weights.read_safetensors(tiny_checkpoint / "model.safetensors", dtype, threads=threads)
        assert got.keys() == on_disk.keys()
        for name, t in on_disk.items():
            assert torch.equal(got[name], t.to(dtype)), name
    monkeypatch.delattr(os, "preadv")
    got = weights.read_safetensors(tiny_checkpoint / "model.safetensors", torch.bfloat16, threads=threads)
    assert all(torch.equal(got[name], t) for name, t in on_disk.items())


def test_truncated_checkpoint_is_a_clear_error(tmp_path, tiny_checkpoint):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:-1000])
    with pytest.raises(ModelNotAvailableError, match="truncated"):
        load_jina_v3(bad, torch.device("cpu"), torch.bfloat16)
