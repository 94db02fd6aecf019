"""model/xlmr.py against independent references, in float32, on tiny random checkpoints of both layouts.

- transformers layout (bge-reranker-v2-m3): transformers' XLMRobertaForSequenceClassification loading the same
  folder, on a padded batch.
- flash layout (jina-reranker-v2): (a) a port of the official remote code's forward (tests/support/reference_xlmr.py),
  and (b) transformers' XLM-R with the flash tensors renamed onto its names (Wqkv split into query/key/value).
  (a) == (b) is the proof that the two layouts are the same network; lastrank == both.
- the packed forward (all sequences in one token axis) against one forward per sequence.
"""

import math
from pathlib import Path

import pytest
import torch

from lastrank.errors import ModelNotAvailableError
from lastrank.checkpoints.xlmr import make_xlmr_checkpoint
from lastrank.model.bert import EncoderPacking
from lastrank.model.xlmr import load_xlmr

from support.reference_xlmr import flash_state, official_flash_forward, padded, padded_logits, transformers_model

ATOL = 1e-5


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("xlmr")
    return {
        "transformers": make_xlmr_checkpoint(base / "bge", "bge-reranker-v2-m3-tiny", seed=1),
        "flash": make_xlmr_checkpoint(base / "jina", "jina-reranker-v2-tiny", seed=2),
    }


def sequences(seed: int = 0, n: int = 12) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(0, 40, (1,), generator=g))
        body = torch.randint(4, 250000, (length,), generator=g).tolist()
        out.append([0] + body + [2])
    out[3] = [0, 2]  # shortest real pair shape
    out[5][4:4] = [1, 1]  # a `<pad>` typed inside a text: position padding_idx, positions after it shift
    out[7] = list(out[6])  # equal lengths share one attention call
    return out


def test_transformers_layout_matches_transformers(folders):
    model, layout = load_xlmr(folders["transformers"], torch.device("cpu"), torch.float32)
    assert layout == "transformers"
    seqs = sequences()
    expected = padded_logits(transformers_model(folders["transformers"]), seqs)
    with torch.no_grad():
        got = model(seqs)[:, 0]
    assert expected.std() > 0.1  # the random head spreads the logits: the comparison is not of near-constants
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_flash_layout_is_xlmr_and_matches_both_references(folders):
    import json

    folder = folders["flash"]
    cfg = json.loads((folder / "config.json").read_text())
    sd = flash_state(folder)
    assert any(".mixer.Wqkv." in k for k in sd) and "roberta.emb_ln.weight" in sd
    seqs = sequences(seed=3)
    with torch.no_grad():
        official = official_flash_forward(sd, cfg, *padded(seqs))
    mapped = padded_logits(transformers_model(folder), seqs)
    model, layout = load_xlmr(folder, torch.device("cpu"), torch.float32)
    assert layout == "flash"
    with torch.no_grad():
        got = model(seqs)[:, 0]
    assert official.std() > 0.1
    torch.testing.assert_close(mapped, official, atol=ATOL, rtol=0)  # the same network after renaming
    torch.testing.assert_close(got, official, atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", ["transformers", "flash"])
def test_packed_forward_equals_one_sequence_at_a_time(folders, layout):
    model, _ = load_xlmr(folders[layout], torch.device("cpu"), torch.float32)
    seqs = sequences(seed=5, n=20)
    with torch.no_grad():
        packed = model(seqs)[:, 0]
        alone = torch.cat([model([s])[:, 0] for s in seqs])
    torch.testing.assert_close(packed, alone, atol=ATOL, rtol=0)


def test_packing_attention_is_confined_to_each_sequence():
    """Per-pair attention against a dense masked reference, with groups cut into many calls (max_scores=1)."""
    g = torch.Generator().manual_seed(0)
    lengths = [3, 7, 3, 1, 7, 7, 12]
    heads, d = 2, 4
    qkv = torch.randn(sum(lengths), 3 * heads * d, generator=g)
    for max_scores in (1 << 26, 1):
        got = EncoderPacking(lengths, torch.device("cpu"), heads, max_scores=max_scores).attention(qkv, heads)
        start = 0
        for n in lengths:
            x = qkv[start:start + n].view(n, 3, heads, d)
            q, k, v = (x[:, i].transpose(0, 1) for i in range(3))
            w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1)
            expected = (w @ v).transpose(0, 1).reshape(n, heads * d)
            torch.testing.assert_close(got[start:start + n], expected, atol=1e-6, rtol=0)
            start += n


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pytorch_bin_with_pickled_code_is_refused_without_running_it(folders, tmp_path):
    import shutil

    folder = tmp_path / "evil"
    shutil.copytree(folders["flash"], folder)
    sd = flash_state(folder)
    marker = tmp_path / "code-ran"
    sd["classifier.dense.weight"] = _RunsCode(marker)
    torch.save(sd, folder / "pytorch_model.bin")
    with pytest.raises(ModelNotAvailableError, match="could not read"):
        load_xlmr(folder, torch.device("cpu"), torch.float32)
    assert not marker.exists()


def test_missing_tensor_is_named(folders, tmp_path):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(folders["flash"], folder)
    sd = flash_state(folder)
    del sd["roberta.encoder.layers.1.norm2.bias"]
    torch.save(sd, folder / "pytorch_model.bin")
    with pytest.raises(ModelNotAvailableError, match=r"layers\.1\.norm2\.bias"):
        load_xlmr(folder, torch.device("cpu"), torch.float32)
