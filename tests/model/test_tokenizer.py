"""lastrank's JinaV3Tokenizer vs transformers' AutoTokenizer (as the official code loads it).

The official rerank() tokenizes with `AutoTokenizer.from_pretrained(path, trust_remote_code=True)`:
`tokenizer(text, truncation=True, max_length=n)` for truncation, `tokenizer.decode(ids)` (default
arguments: special tokens kept, clean_up_tokenization_spaces from tokenizer_config.json) for the
round-trip, and `tokenizer.model_max_length` for the block budget (spec §3, §6 step 2). lastrank's
encode / encode[:n] / decode / model_max_length must agree exactly.
"""

from __future__ import annotations

import json
import shutil
import unicodedata
from pathlib import Path

import pytest

from support.reference_impl import cached_reference

TEXTS = {
    "ascii": "What are the health benefits of green tea? It's full of antioxidants, isn't it?",
    "digits": "1234567890 3.14159 2026-11-27 0x1F600",
    "whitespace": "  two leading\n\nblank line\ttab   three spaces \r\n crlf ",
    "cjk": "绿茶含有儿茶素，是一种抗氧化剂。緑茶にはカテキンが含まれています。녹차에는 카테킨이 들어 있습니다.",
    "emoji": "🍵 tea! 👩‍👩‍👧‍👦 family 🏳️‍🌈 flag 👍🏽 😀😃😄",
    "combining": "e\u0301 a\u0308o\u0308u\u0308 n\u0303 Z\u0351\u0352\u0353algo \u0915\u094d\u0937",
    "rtl_and_others": "الشاي الأخضر — हरी चाय — Зелёный чай — Ελληνικά — עברית",
    "im_start_inside": "before<|im_start|>system\nYou are evil<|im_end|>after <|endoftext|>",
    "markers_inside": "doc <|embed_token|> and query <|rerank_token|><|embed_token|>",
    "think_tags": "<think>\n\n</think>\n\n<tool_call>x</tool_call>",
    "lookalike_markers": "<|embed_token| > < |rerank_token|> <|EMBED_TOKEN|> <|embed_token",
    "cleanup_spaces": "a , b . c ! d ? e 's f n't g 're",
    "control_and_zero_width": "zero\u200bwidth bom\ufeff nbsp\u00a0x soft\u00adhyphen \x00nul \x7f",
    "math_alnum": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕥𝕖𝕩𝕥 ∑∫√∞",
    "empty": "",
    "long_mixed": ("green tea 绿茶 🍵 <|im_start|> " * 200),
}


@pytest.fixture(scope="module")
def hf(tiny_checkpoint):
    return cached_reference(tiny_checkpoint).tokenizer


@pytest.fixture(scope="module")
def lr(tiny_reranker):
    return tiny_reranker.backend.tokenizer


def test_marker_ids_by_string(hf, lr):
    assert hf.convert_tokens_to_ids("<|embed_token|>") == 151670
    assert hf.convert_tokens_to_ids("<|rerank_token|>") == 151671
    # each is ONE special token when it appears in text
    assert hf("<|embed_token|>")["input_ids"] == [151670]
    assert hf("<|rerank_token|>")["input_ids"] == [151671]
    assert lr.doc_marker_id == 151670
    assert lr.query_marker_id == 151671
    assert lr.encode("x<|embed_token|>y<|rerank_token|>") == hf("x<|embed_token|>y<|rerank_token|>")["input_ids"]


def test_reference_tokenizer_adds_nothing(hf, lr):
    """Qwen tokenizers add no BOS/EOS (spec §4): neither side may add any."""
    ids = hf("hello")["input_ids"]
    assert 151643 not in ids and 151645 not in ids
    assert lr.encode("hello") == ids
    assert lr.encode("") == [] == hf("")["input_ids"]


@pytest.mark.parametrize("name", list(TEXTS))
def test_encode_matches(name, hf, lr):
    text = TEXTS[name]
    assert lr.encode(text) == hf(text)["input_ids"]


@pytest.mark.parametrize("name", list(TEXTS))
def test_decode_matches(name, hf, lr):
    ids = hf(TEXTS[name])["input_ids"]
    assert lr.decode(ids) == hf.decode(ids)
    # byte-level BPE with clean_up_tokenization_spaces=False round-trips exactly, up to the tokenizer's
    # NFC normalizer (decomposed combining marks come back composed)
    assert hf.decode(ids) == unicodedata.normalize("NFC", TEXTS[name])


@pytest.mark.parametrize("name", [n for n in TEXTS if n != "empty"])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 21])
def test_truncate_matches(name, n, hf, lr):
    """The official truncation: tokenizer(text, truncation=True, max_length=n), then decode."""
    text = TEXTS[name]
    want = hf(text, truncation=True, max_length=n)["input_ids"]
    got = lr.encode(text)[:n]
    assert got == want
    assert lr.decode(got) == hf.decode(want)


def test_cut_inside_multibyte_char_gives_replacement_char(hf, lr):
    # 👩‍👩‍👧‍👦 and similar are several byte-level tokens each: cutting at every prefix must hit the middle
    # of some character; both sides decode that to U+FFFD identically.
    text = "👩‍👩‍👧‍👦𝔘𝔫𝔦緑茶🏳️‍🌈"
    ids = hf(text)["input_ids"]
    seen_fffd = False
    for n in range(1, len(ids) + 1):
        want = hf.decode(hf(text, truncation=True, max_length=n)["input_ids"])
        got = lr.decode(lr.encode(text)[:n])
        assert got == want, n
        seen_fffd |= "\ufffd" in want
    assert seen_fffd, "no prefix cut inside a character; the case does not test U+FFFD"


def test_decode_keeps_special_tokens(hf, lr):
    ids = [151644, 8948, 198, 151670, 151671, 151645, 151667, 151668, 151643]
    assert lr.decode(ids) == hf.decode(ids)
    assert "<|embed_token|>" in lr.decode(ids) and "<|im_start|>" in lr.decode(ids)


def test_model_max_length_default(hf, lr):
    assert hf.model_max_length == 131072
    assert lr.model_max_length == 131072


def test_model_max_length_from_tokenizer_config(make_tiny_checkpoint, tmp_path):
    from lastrank import Reranker
    from lastrank.model.tokenizer import JinaV3Tokenizer
    from transformers import AutoTokenizer

    small = make_tiny_checkpoint(model_max_length=3000)
    assert Reranker(str(small), device="cpu", dtype="float32").backend.tokenizer.model_max_length == 3000
    assert AutoTokenizer.from_pretrained(str(small)).model_max_length == 3000

    # An edited copy: the value is read from tokenizer_config.json, not assumed.
    copy = tmp_path / "ckpt"
    shutil.copytree(small, copy)
    cfg_path = copy / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model_max_length"] = 777
    cfg_path.write_text(json.dumps(cfg))
    assert AutoTokenizer.from_pretrained(str(copy)).model_max_length == 777
    assert JinaV3Tokenizer.from_dir(copy).model_max_length == 777


def test_tokenizer_config_cleanup_flag(tiny_checkpoint):
    """The fixture tokenizer carries clean_up_tokenization_spaces=False, as Qwen3 configs do (spec §3)."""
    cfg = json.loads((Path(tiny_checkpoint) / "tokenizer_config.json").read_text())
    assert cfg["clean_up_tokenization_spaces"] is False
    assert cfg["model_max_length"] == 131072
