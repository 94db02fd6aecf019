"""The exact prompt of the official modeling.py (model-spec §4). Any byte changed here changes scores."""

from __future__ import annotations

from lastrank.model.config import DOC_MARKER, QUERY_MARKER

SYSTEM_PROMPT = (
    "You are a search relevance expert who can determine a ranking of the passages based on how relevant "
    "they are to the query. If the query is a question, how relevant a passage is depends on how well it "
    "answers the question. If not, try to analyze the intent of the query and assess how well each passage "
    "satisfies the intent. If an instruction is provided, you should follow the instruction when determining "
    "the ranking."
)
PREFIX = "<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n<|im_start|>user\n"
# rerank() always renders the no-thinking assistant turn
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def sanitize(text: str) -> str:
    """Remove marker strings from user text, query marker first (the official order matters for
    nested cases like "<|embed<|rerank_token|>_token|>"). Nothing else is escaped."""
    return text.replace(QUERY_MARKER, "").replace(DOC_MARKER, "")


def build_prompt(query: str, documents: list[str], instruction: str | None = None) -> str:
    """One block's prompt. `query` and `documents` are already truncated; sanitising happens here."""
    query = sanitize(query)
    docs = [sanitize(d) for d in documents]
    body = (
        f"I will provide you with {len(docs)} passages, each indicated by a numerical identifier. "
        f"Rank the passages based on their relevance to query: {query}\n"
    )
    if instruction:
        # Sanitised too: a marker in the instruction would add a phantom document or query vector.
        body += f"<instruct>\n{sanitize(instruction)}\n</instruct>\n"
    body += "\n".join(f'<passage id="{i}">\n{doc}{DOC_MARKER}\n</passage>' for i, doc in enumerate(docs)) + "\n"
    body += f"<query>\n{query}{QUERY_MARKER}\n</query>"
    return PREFIX + body + SUFFIX
