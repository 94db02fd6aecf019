"""How `lastrank serve` ends: a graceful drain on SIGTERM/SIGINT, and an exit when a model cannot load.

`Server` is the uvicorn.Server that cli/commands/serve.py runs. What it changes:

  SIGTERM or SIGINT   stop accepting (uvicorn closes the listening socket and idle keep-alive connections),
                      answer every request still waiting in a model's queue with a JSON 503 + Retry-After
                      (`Scheduler.drain`), let the requests whose blocks are running finish until
                      --shutdown-timeout-s, then answer what is left with the same 503 (`Scheduler.stop`),
                      write one line, and exit 0. uvicorn alone waited for every request (its own timeout
                      then cancelled them: a plain-text 500 and a CancelledError traceback), waited again
                      for the model's worker thread, and re-raised the signal (exit -15, not 0).
                      A second SIGINT exits at once (uvicorn's force exit).
  a model fails       exit non-zero with the reason (`failed`): /ready could never turn 200, and a
  to load             supervisor restarting the process (or an operator reading its one line) is worth
                      more than a server that answers 503 forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time

import uvicorn

# Time left, past the drain's deadline, for the answers to the requests it cut to be written and their
# connections closed before uvicorn cancels what remains (never needed unless the app itself hangs).
WRITE_GRACE_S = 2.0


class Server(uvicorn.Server):
    """uvicorn.Server with the drain on SIGTERM/SIGINT and the exit on a failed model (module docstring).

    `state` is the app's ServerState (app.state.lastrank): its `models` are drained and watched. After
    `run()`, `failed` holds the reason the server gave up (None after a signal).

    `leave`, if given, is called (and must end the process, e.g. with os._exit) at the end of a drain that
    leaves model work behind that Python cannot stop: a model still loading (asyncio.run would wait for its
    loader thread, the rest of the load), or a batch the drain's deadline cut, still inside the model in the
    worker's daemon thread (the interpreter's exit would tear torch down under it: "terminate called without
    an active exception", SIGABRT). Every request has been answered by then."""

    def __init__(self, config: uvicorn.Config, state, shutdown_timeout_s: float, leave=None):
        config.timeout_graceful_shutdown = shutdown_timeout_s + WRITE_GRACE_S
        super().__init__(config)
        self.state = state
        self.shutdown_timeout_s = shutdown_timeout_s
        self.leave = leave
        self.failed: str | None = None

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        failed = [m.load_error for m in self.state.models if m.load_error and not m.ready]
        if failed:
            self.failed = "; ".join(failed)
            return True
        return False

    @contextlib.contextmanager
    def capture_signals(self):
        # uvicorn's, less its last step: it re-raised the signal after a graceful stop, so SIGTERM ended the
        # process by the signal (-15) instead of the 0 a stop that went as asked deserves.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets=None) -> None:
        # uvicorn's own five lifecycle lines ("Shutting down", "Waiting for connections to close", ...) give way
        # to the drain's one; its warnings and errors still show.
        uvicorn_log = logging.getLogger("uvicorn.error")
        uvicorn_log.setLevel(max(uvicorn_log.getEffectiveLevel(), logging.WARNING))
        if self.failed is not None:
            await super().shutdown(sockets)
            return
        started = time.monotonic()
        drain = asyncio.ensure_future(drain_models(self.state.models, started + self.shutdown_timeout_s))
        await super().shutdown(sockets)  # stops accepting, then waits for the open requests to be answered
        refused, finished, cut = await drain
        name = signal.Signals(self._captured_signals[-1]).name if self._captured_signals else "a stop request"
        print(f"lastrank: {name}: stopped in {time.monotonic() - started:.1f} s: {finished} running request(s) "
              f"finished, {refused} queued or arriving answered 503, {cut} cut at --shutdown-timeout-s "
              f"{self.shutdown_timeout_s:g} (answered 503)", file=sys.stderr, flush=True)
        if self.leave is not None and self.model_work_left():
            self.leave()

    def model_work_left(self) -> bool:
        """A model still loading, or a worker still inside a batch (see `leave`)."""
        return any((m.scheduler is None and m.load is not None and m.load_error is None)
                   or getattr(m.scheduler, "busy", False) for m in self.state.models)


async def drain_models(models, deadline: float) -> tuple[int, int, int]:
    """Drain every model's scheduler until `deadline` (time.monotonic()): queued requests are answered 503 at
    once, running ones finish, and at the deadline what is left is answered 503.
    Returns (queued or arriving requests answered 503, running finished, running cut at the deadline)."""
    schedulers = [m.scheduler for m in models if m.scheduler is not None]
    for model in models:
        model.ready = False  # /ready says 503 from now on (to a connection still open)
        model.stopping = True  # ... and why: not "loading"
    for scheduler in schedulers:
        scheduler.drain(deadline)

    def open_requests() -> int:
        return sum(s.queued_requests for s in schedulers)

    running = open_requests()
    while open_requests() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    cut = open_requests()
    for scheduler in schedulers:
        await scheduler.stop()  # answers what is left; waits for the worker no longer than the deadline
    refused = sum(s.refused_draining for s in schedulers)
    return refused, running - cut, cut


__all__ = ["Server", "drain_models"]
