"""`Backend.limits(request)` is the one owner of a request's effective limits, and every family's chunk window
fits them: for every tiny preset of every family, `chunk_window(request, limits)` is at most `limits.max_doc`,
and a document of exactly that many own tokens plans uncut (chunk mode relies on both)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lastrank.engine.chunking import ChunkingBackend
from lastrank.checkpoints import preset, presets
from lastrank.families import FAMILIES, load_backend
from lastrank.types import RerankOptions, RerankRequest

TINY = [name for spec in FAMILIES for name, p in presets(spec).items() if p.tiny]
TEXT = " ".join(["Cat fleas usually live for about a year, and their eggs hatch within two weeks."] * 1200)
REQUESTS = [dict(), dict(max_doc_length=256), dict(max_doc_length=256, max_query_length=32)]


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    return {name: load_backend(preset(name)[1].write(tmp_path_factory.mktemp(name), seed=0, dtype="float32"),
                               dtype="float32")
            for name in TINY}


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("options", REQUESTS, ids=["defaults", "max_doc", "max_doc+max_query"])
def test_chunk_window_fits_the_limits(backends, name, options):
    backend = backends[name]
    request = RerankRequest(query="how long do cat fleas live?", documents=[TEXT], options=RerankOptions(**options))
    limits = backend.limits(request)
    assert ChunkingBackend(backend).limits(request) == limits  # the wrapper forwards the family's own
    window = backend.chunk_window(request, limits)
    assert 1 <= window <= limits.max_doc
    # a document of exactly `window` own tokens (cut at a token's end) is kept whole
    offsets = backend.token_offsets([TEXT])[0]
    assert len(offsets) > window
    doc = TEXT[:offsets[window - 1][1]]
    plan = backend.plan(replace(request, documents=[doc]))
    assert not plan.usage.query_truncated
    if backend.capabilities.family == "jina-v3":  # the official rule flags a text of exactly max_doc tokens (>=),
        assert plan.usage.doc_tokens == [window]  # though it keeps them all (families/jina_v3/plan.py)
    else:
        assert plan.usage.truncated_indices == []
    assert (plan.usage.max_doc_length, plan.usage.max_query_length) == tuple(limits)
