"""What each subcommand does, one module per subcommand, named by its parser module one folder up
(`handler="lastrank.cli.commands.<name>:<function>"`) and imported only when that subcommand runs."""

from __future__ import annotations

import gc
from contextlib import contextmanager


@contextmanager
def collector_paused():
    """Load a model with Python's cyclic garbage collector paused, then freeze what the load made.

    The first model load imports torch and the model code and builds the modules: objects that live as long as
    the process, none of them garbage, yet the allocations trigger hundreds of collections that walk them
    (0.11-0.13 s of the ~2.2 s of CPU to `lastrank rerank`'s first result on MiniLM, measured with gc.callbacks
    on an AMD Zen 3; docs/benchmarks.md "Cold start"). Frozen (`gc.freeze`), they are never scanned again.
    Only in a process that froze nothing yet: a command run again in one process (the tests call main) could
    otherwise freeze the garbage of its earlier runs."""
    if gc.get_freeze_count() or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
