import pytest

from lastrank.families.jina_v3.plan import BLOCK_SIZE, split_blocks, truncate_texts
from lastrank.errors import InvalidRequestError
from lastrank.model.tokenizer import JinaV3Tokenizer
from lastrank.types import RerankOptions, RerankRequest


def reference_blocks(doc_lengths, query_length, max_length, max_doc_length):
    """model-spec §6 step 3, transcribed literally."""
    cap = max_length - 2 * query_length
    block, out = [], []
    for i, n in enumerate(doc_lengths):
        block.append(i)
        cap -= n
        if len(block) >= 125 or cap <= max_doc_length:
            out.append(block)
            block, cap = [], max_length - 2 * query_length
    if block:
        out.append(block)
    return out


@pytest.mark.parametrize(
    "lengths,qlen,max_length,max_doc",
    [
        ([10] * 300, 5, 131072, 2048),  # 125-document rule: 125 + 125 + 50
        ([2048] * 70, 512, 131072, 2048),  # token budget closes blocks of long documents
        ([500, 1500, 1, 2500, 3000, 7], 100, 4000, 1000),
        ([1] * 125, 1, 131072, 2048),  # exactly one full block, no empty trailing block
        ([5000], 10, 3000, 2048),  # budget already exceeded by one document: a block of one
    ],
)
def test_split_blocks_matches_spec(lengths, qlen, max_length, max_doc):
    assert split_blocks(lengths, qlen, max_length, max_doc) == reference_blocks(lengths, qlen, max_length, max_doc)


def test_block_size_is_the_codes_125():
    assert BLOCK_SIZE == 125
    assert [len(b) for b in split_blocks([1] * 251, 1, 131072, 2048)] == [125, 125, 1]


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    return JinaV3Tokenizer.from_dir(tiny_checkpoint)


def test_truncation_fires_at_exactly_the_limit(tokenizer):
    text = "word " * 50
    n = len(tokenizer.encode(text))
    exact = truncate_texts(tokenizer, [text], n)
    assert exact.lengths == [n] and exact.truncated == [True]
    assert exact.texts == [tokenizer.decode(tokenizer.encode(text))]
    under = truncate_texts(tokenizer, [text], n + 1)
    assert under.truncated == [False] and under.texts == [text]
    cut = truncate_texts(tokenizer, [text], 7)
    assert cut.lengths == [7] and cut.texts[0] == tokenizer.decode(tokenizer.encode(text)[:7])


def test_truncation_inside_a_character_decodes_to_replacement_char(tokenizer):
    text = "𓀀𓀁 漢"  # rare characters: byte-level BPE spends several tokens on each
    ids = tokenizer.encode(text)
    assert len(ids) > len(text)
    out = truncate_texts(tokenizer, [text], 1)
    assert "\ufffd" in out.texts[0]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(query=1, documents=["a"]), "query must be a string"),
        (dict(query="q", documents="abc"), "documents must be a list"),
        (dict(query="q", documents=["a", None]), r"documents\[1\] must be a string"),
        (dict(query="q", documents=["a"], options=dict(top_n=-1)), "top_n must be >= 0"),
        (dict(query="q", documents=["a"], options=dict(top_n=True)), "top_n must be an integer"),
        (dict(query="q", documents=["a"], options=dict(max_doc_length=0)), "max_doc_length must be >= 1"),
        (dict(query="q", documents=["a"], options=dict(max_query_length="5")), "max_query_length must be an integer"),
        (dict(query="q", documents=["a"], options=dict(instruction=3)), "instruction must be a string"),
    ],
)
def test_validate_names_the_bad_item(kwargs, match):
    with pytest.raises(InvalidRequestError, match=match):
        options = RerankOptions(**kwargs.get("options", {}))  # each validated once, when built
        RerankRequest(**{**kwargs, "options": options})
    assert issubclass(InvalidRequestError, ValueError)


def test_numpy_integers_are_accepted_as_counts():
    import numpy as np

    request = RerankRequest(query="q", documents=["a"],
                            options=RerankOptions(top_n=np.int64(1), max_doc_length=np.int32(7)))
    assert request.options.top_n == 1 and type(request.options.top_n) is int and request.options.max_doc_length == 7
