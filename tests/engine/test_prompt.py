from lastrank.engine.prompt import PREFIX, SUFFIX, build_prompt, sanitize

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
