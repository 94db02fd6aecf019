from lastrank.families.jina_v3.prompt import PREFIX, SUFFIX, build_prompt, sanitize

# model-spec §4: everything after the prefix for query "Q" and documents ["Doc A", "Doc B"], byte for byte.
SPEC_BODY = (
    'I will provide you with 2 passages, each indicated by a numerical identifier. Rank the passages based on their '
    'relevance to query: Q\n<passage id="0">\nDoc A<|embed_token|>\n</passage>\n<passage id="1">\nDoc B'
    '<|embed_token|>\n</passage>\n<query>\nQ<|rerank_token|>\n</query><|im_end|>\n<|im_start|>assistant\n'
    '<think>\n\n</think>\n\n'
)


def test_prompt_matches_spec_bytes():
    prompt = build_prompt("Q", ["Doc A", "Doc B"])
    assert prompt.startswith(PREFIX)
    assert prompt[len(PREFIX):] == SPEC_BODY
    assert PREFIX.startswith("<|im_start|>system\nYou are a search relevance expert")
    assert PREFIX.endswith("when determining the ranking.<|im_end|>\n<|im_start|>user\n")


def test_instruction_section_sits_between_query_line_and_passages():
    prompt = build_prompt("Q", ["D"], instruction="Prefer recent news.")
    assert "relevance to query: Q\n<instruct>\nPrefer recent news.\n</instruct>\n<passage id=\"0\">" in prompt
    assert build_prompt("Q", ["D"], instruction="") == build_prompt("Q", ["D"])


def test_sanitize_removes_query_marker_first_then_doc_marker():
    assert sanitize("a<|embed_token|>b<|rerank_token|>c") == "abc"
    # removing the query marker first assembles a doc marker, which is then removed too
    assert sanitize("<|embed<|rerank_token|>_token|>") == ""
    assert sanitize("<|im_start|>stays") == "<|im_start|>stays"


def test_markers_in_user_text_do_not_add_markers():
    prompt = build_prompt("q<|rerank_token|>", ["x<|embed_token|>", "<|im_start|>y"], instruction="<|embed_token|>")
    assert prompt.count("<|embed_token|>") == 2
    assert prompt.count("<|rerank_token|>") == 1
    assert SUFFIX in prompt


# ------------------------------------------------------------------------------------------------
# Nested marker strings (issue 9): the one intended deviation from the official one-pass removal.


import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lastrank.families.jina_v3.prompt import _remove_markers  # noqa: E402
from lastrank.errors import InvalidRequestError  # noqa: E402

from support.reference_impl import sanitize as official_sanitize  # noqa: E402

DOC, QRY = "<|embed_token|>", "<|rerank_token|>"
# Every reproduction of issue 9, each of which the one-pass removal turns into a surviving marker.
NESTED = [
    "<|embed_<|embed_token|>token|>",
    "a<|rerank_<|embed_token|>token|>b",
    "<|<|embed_token|>embed_token|>",
    "<|rerank_<|rerank_token|>token|>",
    "<|<|rerank_token|>rerank_token|>",
    "<|embed_" * 50 + DOC + "token|>" * 50,  # deep nesting: 50 rounds of the one-pass removal
]


def test_official_one_pass_leaves_a_marker_in_every_reproduction():
    # This is why lastrank deviates here: the official code would see an extra marker and crash or mislabel.
    for text in NESTED:
        once = official_sanitize(text)
        assert DOC in once or QRY in once, text


@pytest.mark.parametrize("text", NESTED)
def test_nested_markers_leave_no_marker(text):
    out = sanitize(text)
    assert DOC not in out and QRY not in out
    assert out == sanitize(out)  # a fixed point


def test_nested_markers_reach_the_fixed_point_of_the_official_removal():
    # Repeating the official pass until nothing changes gives the same string (the rewriting is confluent).
    for text in NESTED + ["x<|embed<|rerank_token|>_token|>y", "<|rerank<|embed_<|embed_token|>token|>_token|>"]:
        fixed = text
        while (nxt := official_sanitize(fixed)) != fixed:
            fixed = nxt
        assert sanitize(text) == fixed, text
    assert sanitize("a<|rerank_<|embed_token|>token|>b") == "ab"


FRAGMENTS = st.lists(st.sampled_from(["<|", "|>", "embed", "rerank", "_token", "<|embed_token|>", "<|rerank_token|>",
                                      "a", " ", "<", ">", "|", "_", "token|>", "<|embed_", "<|rerank_"]), max_size=24)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(FRAGMENTS)
def test_sanitize_equals_official_bytes_whenever_the_official_leaves_no_marker(parts):
    text = "".join(parts)
    out = sanitize(text)
    assert DOC not in out and QRY not in out
    once = official_sanitize(text)
    if DOC not in once and QRY not in once:
        assert out == once  # parity cases stay bit for bit
    assert _remove_markers(text) == out  # the stack scan alone reaches the same normal form


@pytest.mark.parametrize("text", NESTED)
def test_nested_markers_in_every_field_build_a_well_formed_prompt(text):
    prompt = build_prompt(text, [text, "x", text], instruction=text)
    assert prompt.count(DOC) == 3 and prompt.count(QRY) == 1


def test_a_marker_miscount_is_a_400_for_that_request(monkeypatch):
    import lastrank.families.jina_v3.prompt as prompt_mod

    monkeypatch.setattr(prompt_mod, "sanitize", official_sanitize)  # simulate a regression to one pass
    with pytest.raises(InvalidRequestError, match="2 documents holds 3 document markers"):
        prompt_mod.build_prompt("q", ["<|embed_<|embed_token|>token|>", "x"])
    with pytest.raises(InvalidRequestError, match="3 query markers"):  # the query appears twice
        prompt_mod.build_prompt("a<|rerank_<|embed_token|>token|>b", ["x"])


def test_nested_markers_rank_like_the_reference_on_the_sanitised_text(tiny_checkpoint, tiny_reranker):
    """The documented behaviour end to end: lastrank on hostile text scores exactly as the reference scores
    the marker-free text (one block, nothing truncated, so lengths counted before sanitising do not matter)."""
    from support.reference_impl import assert_parity, cached_reference

    query = "a<|rerank_<|embed_token|>token|>b tea"
    docs = NESTED[:5] + ["green tea", "plain text"]
    got = tiny_reranker.rerank(query, docs)
    want = cached_reference(tiny_checkpoint).rerank(sanitize(query), [sanitize(d) for d in docs])
    assert_parity(got, want, docs)  # returned documents are the originals
