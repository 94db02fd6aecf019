"""A circuit breaker per provider: closed -> open -> half-open -> closed.

    closed      requests go through; `failure_threshold` failures in a row open it
    open        the provider is out for `cooldown_s`; then the next request that asks becomes the probe
    half_open   exactly one request (the probe) goes through: its success closes the breaker, its failure opens
                it again for another `cooldown_s`; other requests skip the provider meanwhile

A probe is usually a real client request: the router tries the provider first in its usual order and, if the probe
fails, goes on to the next provider within the request's deadline, so a probe never costs the client an answer
(the way LiteLLM's cooldowns behave). A remote provider may also be probed in the background while its breaker is
open (providers.py, RemoteProvider.probe: `begin_probe`, then `success` or `probe_failed`), so an idle provider
comes back without waiting for traffic, and a client request does not wait on a provider that is still down.
Separately from failures, a provider can be *held* until a time it named
itself (a 429's or 503's Retry-After): held is not unhealthy, so it does not open the breaker, but nothing is sent
to it before then.

The clock is injected (tests drive it); the router calls it only from the event loop, so there is no lock.
"""

from __future__ import annotations

import time
from typing import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Breaker:
    def __init__(self, failure_threshold: int = 3, cooldown_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._state = CLOSED
        self.failures = 0  # in a row, while closed
        self.open_until = 0.0
        self.held_until = 0.0  # Retry-After
        self.probing = False  # the half-open probe is in flight
        self.opened = 0  # times it opened (for /v1/models and tests)
        self.closed_again = 0  # times a probe closed it

    @property
    def state(self) -> str:
        """closed, open, or half_open (an open breaker whose cooldown is over reads half_open)."""
        if self._state == OPEN and self.clock() >= self.open_until:
            return HALF_OPEN
        return self._state

    def available(self) -> bool:
        """Would `acquire()` let a request through now? (No side effect: for ordering and admission checks.)"""
        if self.clock() < self.held_until:
            return False
        state = self.state
        return state == CLOSED or (state == HALF_OPEN and not self.probing)

    def acquire(self) -> bool:
        """Let one request through (True) or not. In half-open, the one let through is the probe."""
        if not self.available():
            return False
        if self.state == HALF_OPEN:
            self._state = HALF_OPEN
            self.probing = True
        return True

    def success(self) -> None:
        if self._state != CLOSED:
            self.closed_again += 1
        self._state = CLOSED
        self.failures = 0
        self.probing = False

    def failure(self, retry_after: float | None = None) -> None:
        """A failure of this provider (connect error, timeout, 5xx): counts toward opening; a probe's failure
        opens it again at once."""
        now = self.clock()
        if retry_after:
            self.held_until = max(self.held_until, now + retry_after)
        if self._state == CLOSED:
            self.failures += 1
            if self.failures < self.failure_threshold:
                return
        if self._state == CLOSED or self.probing or self._state == HALF_OPEN:
            self.opened += 1
        self._state = OPEN
        self.open_until = now + self.cooldown_s
        self.failures = 0
        self.probing = False

    def trip(self) -> None:
        """Open now, whatever the count (a provider found down at start-up): out for `cooldown_s`, then probed."""
        if self._state != OPEN:
            self.opened += 1
        self._state = OPEN
        self.open_until = self.clock() + self.cooldown_s
        self.failures = 0
        self.probing = False

    def begin_probe(self) -> bool:
        """A background health probe may go now (True, and it holds the probe slot): the breaker is open or
        half-open, no probe is in flight and no Retry-After holds the provider. Its answer: `success()` closes
        the breaker; `probe_failed()` keeps it open."""
        if self._state == CLOSED or self.probing or self.clock() < self.held_until:
            return False
        self.probing = True
        return True

    def probe_failed(self) -> None:
        """A background probe found the provider still down: open for another `cooldown_s` from now, so client
        requests keep skipping it rather than probing it themselves (not counted in `opened`: it never closed)."""
        self._state = OPEN
        self.open_until = self.clock() + self.cooldown_s
        self.probing = False

    def hold(self, seconds: float) -> None:
        """The provider asked for time (429 Retry-After): send it nothing for `seconds`; a probe in flight that
        got this answer is over without a verdict (the breaker stays as it was)."""
        self.held_until = max(self.held_until, self.clock() + seconds)
        self.probing = False

    def release(self) -> None:
        """The request let through ended without a verdict on the provider (the client's own error, a
        cancellation): a probe slot is given back."""
        self.probing = False

    def as_dict(self) -> dict:
        now = self.clock()
        out = {"state": self.state, "opened": self.opened, "consecutive_failures": self.failures}
        if self.state == OPEN:
            out["retry_in_s"] = round(max(0.0, self.open_until - now), 3)
        if self.held_until > now:
            out["held_for_s"] = round(self.held_until - now, 3)
        return out
