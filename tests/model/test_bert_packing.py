"""model/bert.py's EncoderPacking, shared by the BERT and XLM-R encoders: attention confined to each sequence when
every sequence has the same length (one call over all rows, no gather), q/k/v given apart or fused, and both
position rules against transformers' own functions."""

import math

import pytest
import torch

from lastrank.model.bert import EncoderPacking

CPU = torch.device("cpu")


def dense_reference(q, k, v, lengths, heads):
    out, start = [], 0
    d = q.shape[1] // heads
    for n in lengths:
        qs, ks, vs = (t[start:start + n].view(n, heads, d).transpose(0, 1) for t in (q, k, v))
        w = torch.softmax(qs @ ks.transpose(1, 2) / math.sqrt(d), dim=-1)
        out.append((w @ vs).transpose(0, 1).reshape(n, heads * d))
        start += n
    return torch.cat(out)


@pytest.mark.parametrize("lengths", [[9], [5, 5, 5], [4, 9, 4, 1], [1, 4, 4, 9]])  # gathered and side-by-side groups
def test_attention_fused_and_apart_match_the_dense_reference(lengths):
    g = torch.Generator().manual_seed(1)
    heads, d = 3, 4
    qkv = torch.randn(sum(lengths), 3 * heads * d, generator=g)
    q, k, v = (t.contiguous() for t in qkv.chunk(3, dim=1))
    packing = EncoderPacking(lengths, CPU, heads)
    expected = dense_reference(q, k, v, lengths, heads)
    torch.testing.assert_close(packing.attention(qkv, heads), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(packing.attend(q, k, v, heads), expected, atol=1e-6, rtol=0)


def test_position_rules_match_transformers():
    from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaEmbeddings

    seqs = [[0, 5, 6, 2], [0, 7, 1, 1, 8, 2], [0, 2]]  # a typed `<pad>` (id 1) inside the second
    packing = EncoderPacking([len(s) for s in seqs], CPU, 1)
    ids = torch.tensor([t for s in seqs for t in s])
    bert = packing.positions(ids, "bert", 0)
    roberta = packing.positions(ids, "roberta", 1)
    at = 0
    for s in seqs:
        n = len(s)
        assert bert[at:at + n].tolist() == list(range(n))
        ref = XLMRobertaEmbeddings.create_position_ids_from_input_ids(torch.tensor([s]), padding_idx=1)[0]
        assert roberta[at:at + n].tolist() == ref.tolist()
        at += n


def test_empty_sequence_is_refused():
    with pytest.raises(ValueError, match="at least one token"):
        EncoderPacking([3, 0], CPU, 1)
