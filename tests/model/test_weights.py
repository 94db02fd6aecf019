"""model/weights.py: the one strict loader every family's loader goes through. A checkpoint with a missing, an
unexpected or a wrongly shaped tensor is one error line that names the file and the tensor, whatever the
family; torch.compile is decided in one place (LASTRANK_COMPILE when the caller does not say)."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from lastrank.checkpoints.causal import make_causal_checkpoint
from lastrank.checkpoints.st import make_st_checkpoint
from lastrank.errors import ModelNotAvailableError
from lastrank.model.bert import load_bert
from lastrank.model.causal_lm import load_causal_lm
from lastrank.model.jina import load_jina_v3

CPU = torch.device("cpu")

# family -> (loader, a tensor to drop, a tensor to reshape, a name to add)
FAMILIES = {
    "jina-v3": (lambda p: load_jina_v3(p, CPU, torch.float32),
                "model.layers.1.mlp.up_proj.weight", "model.norm.weight", "model.layers.0.extra.weight"),
    "bert": (lambda p: load_bert(p, CPU, torch.float32),
             "encoder.layer.1.output.dense.weight", "embeddings.LayerNorm.weight", "encoder.extra.weight"),
    "causal-lm": (lambda p: load_causal_lm(p, CPU, torch.float32, (1, 2)),
                  "model.layers.0.mlp.down_proj.weight", "model.norm.weight", "model.layers.0.extra.weight"),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, make_tiny_checkpoint):
    root = tmp_path_factory.mktemp("weights")
    return {"jina-v3": make_tiny_checkpoint(dtype="float32"),
            "bert": make_st_checkpoint(root / "bert", seed=3),
            "causal-lm": make_causal_checkpoint(root / "causal", "qwen3-reranker", dtype="float32", seed=1)}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_its_checkpoint_unchanged(family, folders):
    load, *_ = FAMILIES[family]
    model = load(folders[family])
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("change", ["missing", "unexpected", "wrong shape"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_mismatched_tensor_is_one_line_naming_the_file_and_the_tensor(family, change, folders, tmp_path):
    load, drop, reshape, extra = FAMILIES[family]
    folder = tmp_path / family
    shutil.copytree(folders[family], folder)
    file = folder / "model.safetensors"
    state = load_file(str(file))
    assert drop in state and reshape in state and extra not in state  # the names are the checkpoint's
    if change == "missing":
        del state[drop]
        name = drop
    elif change == "unexpected":
        state[extra] = torch.zeros(3)
        name = extra
    else:
        state[reshape] = torch.zeros(state[reshape].shape[0] + 1)
        name = reshape
    save_file(state, str(file))
    with pytest.raises(ModelNotAvailableError) as e:
        load(folder)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{file} does not match the ") and f"{change} {name}" in message


def test_compile_is_decided_in_one_place_for_every_decoder_loader(folders, monkeypatch):
    """LASTRANK_COMPILE is read by strict_load, so the causal-LM loader honours it as Jina V3's does; an
    explicit compile=False wins over it. torch.compile compiles on the first call: nothing runs here."""
    monkeypatch.setenv("LASTRANK_COMPILE", "1")
    assert load_causal_lm(folders["causal-lm"], CPU, torch.float32, (1, 2)).model.compiled_layer is not None
    assert load_jina_v3(folders["jina-v3"], CPU, torch.float32).model.compiled_layer is not None
    assert load_causal_lm(folders["causal-lm"], CPU, torch.float32, (1, 2), compile=False).model.compiled_layer is None
    monkeypatch.setenv("LASTRANK_COMPILE", "0")
    assert load_causal_lm(folders["causal-lm"], CPU, torch.float32, (1, 2)).model.compiled_layer is None
