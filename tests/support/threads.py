"""Race tests: the same work in several threads at once, joined, with any thread's exception raised in the test
(a thread's own exception is only printed, and the test would go on to fail, or pass, on its counts)."""

from __future__ import annotations

import threading
from collections.abc import Callable


def in_threads(count: int, worker: Callable[[int], object], *, together: bool = False,
               timeout: float | None = None) -> None:
    """worker(0), ..., worker(count - 1), each in a thread of its own, all joined before this returns. With
    `together`, each waits at one barrier first, so they start as close to the same moment as threads can. The
    first exception a worker raised is raised here; a thread still running after `timeout` is a failure."""
    barrier = threading.Barrier(count) if together else None
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            if barrier is not None:
                barrier.wait()
            worker(i)
        except BaseException as e:  # raised below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if errors:
        raise errors[0]
    assert not any(t.is_alive() for t in threads), f"a thread was still running after {timeout} s"
