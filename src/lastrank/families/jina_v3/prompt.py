"""The exact prompt the official modeling.py builds: its chat template around the query and the documents,
with their markers. Any byte changed here changes scores.

One intended deviation: marker strings are removed from user text until none is left. The official code
removes every literal query marker, then every literal document marker, once. Nested strings such as
"<|embed_<|embed_token|>token|>" or "<|rerank_<|embed_token|>token|>" assemble a new marker during that
one pass; the official code then crashes (more document markers than documents, or two query markers) or
reads a vector at the wrong place. `sanitize` returns the official one-pass result whenever that result
holds no marker (every input the official code handles, bit for bit), and otherwise keeps removing.

Why this is one well-defined answer: deleting marker occurrences is a string-rewriting system whose two
rules ("<|rerank_token|>" -> "", "<|embed_token|>" -> "") cannot overlap (no proper suffix of either
marker is a prefix of either), so every order of deletions ends in the same marker-free string. The
one-pass removal, a repeated one, and the single left-to-right stack scan used here are all such orders.
"""

from __future__ import annotations

from lastrank.errors import InvalidRequestError
from lastrank.model.jina import DOC_MARKER, QUERY_MARKER

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
    """User text with no marker string left in it (see the module docstring).

    The official one-pass removal (query marker first, then document marker) is kept whenever it leaves
    no marker, so ordinary text, and every nested case the official code handles (e.g.
    "<|embed<|rerank_token|>_token|>" -> ""), gives the official bytes. Nothing else is escaped."""
    once = text.replace(QUERY_MARKER, "").replace(DOC_MARKER, "")
    if QUERY_MARKER not in once and DOC_MARKER not in once:
        return once
    return _remove_markers(once)


def _remove_markers(text: str) -> str:
    """Stack scan: append the text piece by piece and drop a marker the moment the output ends with one.

    The output never holds a marker (one can only appear at its end, as a ">" is appended, and is removed
    there), so the result has none; linear in len(text) however deep the nesting, where repeating the
    one-pass removal would take one pass per nesting level."""
    out: list[str] = []
    markers = [(m, len(m)) for m in (QUERY_MARKER, DOC_MARKER)]
    pieces = text.split(">")
    for piece in pieces[:-1]:
        out.extend(piece)
        out.append(">")
        if out[-2:-1] != ["|"]:
            continue  # the cheap common case: both markers end in "|>"
        for marker, n in markers:
            if len(out) >= n and "".join(out[-n:]) == marker:
                del out[-n:]
                break  # the two markers end differently: at most one can match
    out.extend(pieces[-1])
    return "".join(out)


def _check_markers(prompt: str, n_docs: int) -> None:
    # `sanitize` guarantees this; a failure here must stay this request's 400 and never reach the model,
    # where a miscount would fail every request batched with it.
    docs, queries = prompt.count(DOC_MARKER), prompt.count(QUERY_MARKER)
    if docs != n_docs or queries != 1:
        raise InvalidRequestError(
            f"the prompt for {n_docs} documents holds {docs} document markers and {queries} query markers "
            "after removing marker strings from the text; the request cannot be ranked")


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
    _check_markers(body, len(docs))
    return PREFIX + body + SUFFIX
