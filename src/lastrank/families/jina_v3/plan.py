"""Truncation and blocking exactly as the official rerank() does them (its first three steps: truncate the
query and the documents, then cut the documents into blocks). Pure."""

from __future__ import annotations

from dataclasses import dataclass

from lastrank.model.tokenizer import JinaV3Tokenizer

BLOCK_SIZE = 125  # documents per forward pass in the official code (the model card's "64" is wrong)


@dataclass
class Truncated:
    texts: list[str]  # after the decode round-trip where it fired
    lengths: list[int]  # token counts after truncation
    truncated: list[bool]


def truncate_texts(tokenizer: JinaV3Tokenizer, texts: list[str], max_length: int) -> Truncated:
    """Cut each text to `max_length` tokens. Like the official code, a text of exactly `max_length` tokens
    is also replaced by its decoded ids, which can change it (e.g. U+FFFD where a cut splits a character)."""
    out, lengths, flags = [], [], []
    for text, ids in zip(texts, tokenizer.encode_batch(texts)):
        ids = ids[:max_length]
        fired = len(ids) >= max_length
        out.append(tokenizer.decode(ids) if fired else text)
        lengths.append(len(ids))
        flags.append(fired)
    return Truncated(out, lengths, flags)


def split_blocks(doc_lengths: list[int], query_length: int, model_max_length: int, max_doc_length: int,
                 block_size: int = BLOCK_SIZE) -> list[list[int]]:
    """Document indices per block, in input order. A block closes at `block_size` documents or when the
    remaining token budget (model_max_length - 2 * query_length, template overhead not counted) drops to
    max_doc_length or below."""
    full_cap = model_max_length - 2 * query_length
    blocks: list[list[int]] = []
    block: list[int] = []
    cap = full_cap
    for i, n_tokens in enumerate(doc_lengths):
        block.append(i)
        cap -= n_tokens
        if len(block) >= block_size or cap <= max_doc_length:
            blocks.append(block)
            block, cap = [], full_cap
    if block:
        blocks.append(block)
    return blocks
