"""The device the suite's models run on: LASTRANK_TEST_DEVICE (default cpu; benchmarks/gpu_run.py sets cuda).

Every model loaded through the registry (Reranker, load_backend) that asks for "cpu" (or no device) goes
there; the official references stay on the CPU, so a parity suite compares lastrank on that device with the
reference in float32. tests/conftest.py applies it to the whole session; a module of its own so that a test
can import it (the name `conftest` is ambiguous: tests/api has one too)."""

from __future__ import annotations

import os

TEST_DEVICE = os.environ.get("LASTRANK_TEST_DEVICE", "cpu").strip() or "cpu"


def use_test_device(device: str):
    """Send registry loads that ask for "cpu" (or no device) to `device` (`resolve_device`, which
    families.load_backend calls on each load); returns the undo."""
    from lastrank.model import loading

    original = loading.resolve_device

    def on_test_device(requested):
        return original(device if requested is None or str(requested) == "cpu" else requested)

    loading.resolve_device = on_test_device
    return lambda: setattr(loading, "resolve_device", original)
