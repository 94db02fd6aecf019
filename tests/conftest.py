"""Shared fixtures: tiny random checkpoints in the official layout, with the real Qwen3 tokenizer."""

from __future__ import annotations

import os
import tempfile

import pytest
from support.device_switch import TEST_DEVICE, use_test_device

# Nothing in the suite may reach a model hub: fail fast instead of hanging on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# dtype "auto" caches what it measures (engine/dtype_choice.py): the suite's go to a folder of its own, never
# to the user's cache (and every run measures afresh)
os.environ.setdefault("LASTRANK_CACHE_DIR", tempfile.mkdtemp(prefix="lastrank-test-cache-"))


@pytest.fixture(autouse=True, scope="session")
def _models_on_the_test_device():
    """LASTRANK_TEST_DEVICE (tests/support/device_switch.py): the device every model the suite loads runs on."""
    undo = use_test_device(TEST_DEVICE) if TEST_DEVICE != "cpu" else None
    yield
    if undo is not None:
        undo()


@pytest.fixture(scope="session")
def make_tiny_checkpoint(tmp_path_factory):
    """Factory: make_tiny_checkpoint(seed=0, model_max_length=131072, **config_overrides) -> Path (cached)."""
    from lastrank.checkpoints.jina_v3 import make_jina_v3_checkpoint

    cache: dict = {}

    def make(seed: int = 0, model_max_length: int = 131072, dtype: str = "bfloat16", **overrides):
        key = (seed, model_max_length, dtype, tuple(sorted(overrides.items())))
        if key not in cache:
            path = tmp_path_factory.mktemp("ckpt")
            cache[key] = make_jina_v3_checkpoint(path, "tiny", seed=seed, dtype=dtype, model_max_length=model_max_length, **overrides)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(make_tiny_checkpoint):
    """The default tiny checkpoint (bf16 on disk, as the official one)."""
    return make_tiny_checkpoint()


@pytest.fixture(scope="session")
def tiny_reranker(tiny_checkpoint):
    """A float32 Reranker on the tiny checkpoint, shared by the whole session (read-only use)."""
    from lastrank import Reranker

    return Reranker(str(tiny_checkpoint), device="cpu", dtype="float32")
