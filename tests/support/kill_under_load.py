"""Kill under load: clients in threads send rerank requests while the test kills a server (or a replica), then
the ledger must hold every request a client saw answered, exactly once. Shared by tests/api/test_real_clients.py
(one server, SIGKILL, restart), tests/api/test_replicas_postgres.py (two servers on one PostgreSQL store) and
tests/deploy/test_ray_serve.py (a Ray Serve replica).

    with Load(url, QUERY, DOCS, clients=8, seconds=60) as load:
        load.wait_for(20)          # answers before the kill
        server.kill()
    ...assert on load.answered / load.refused / load.cut / load.other...
    assert_billed_exactly(ledger_ids, load.answered, unanswered_at_most=len(load.cut))
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx


class Load:
    """`clients` threads, each posting to `url` + /v1/rerank in a loop until the with-block ends. Every request
    carries documents of its own (each of `docs` with the client's number and the request's appended), so each
    is a new request and, when answered, a new ledger row. What the clients got, sorted by outcome:
      answered  the ids of the 200s;
      refused   the x-request-id of each non-200 answer `refusal` accepts (an answer the test expects);
      cut       a request that got no answer (connection dropped, refused or timed out), its error's repr;
      other     any other answer, as (status, start of the body).
    `url` may be a function (client, request number) -> URL, to pick a server per request. With
    `stop_when_cut`, a client whose request was cut stops (one server: nothing is left to answer it, and a
    refused connection would count as a request cut in flight)."""

    def __init__(self, url: str | Callable[[int, int], str], query: str, docs: list[str], *, clients: int,
                 seconds: float, headers: dict | None = None, timeout: float = 30.0,
                 refusal: Callable[[httpx.Response], bool] = lambda r: False, stop_when_cut: bool = False,
                 join_timeout: float = 60.0):
        self.url = url if callable(url) else lambda n, i: url
        self.query, self.docs, self.headers, self.timeout = query, docs, headers or {}, timeout
        self.refusal, self.stop_when_cut, self.join_timeout = refusal, stop_when_cut, join_timeout
        self.deadline = time.monotonic() + seconds
        self.answered: list[str] = []
        self.refused: list[str] = []
        self.cut: list[str] = []
        self.other: list[tuple[int, str]] = []
        self.hung: list[threading.Thread] = []  # threads still running after the block ended and join_timeout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,)) for n in range(clients)]

    def _client(self, n: int) -> None:
        with httpx.Client(timeout=self.timeout, headers=self.headers) as http:
            i = 0
            while not self._stop.is_set():
                i += 1
                try:
                    r = http.post(self.url(n, i) + "/v1/rerank",
                                  json={"query": self.query, "documents": [f"{d} ({n}-{i})" for d in self.docs]})
                except httpx.HTTPError as e:
                    with self._lock:
                        self.cut.append(repr(e))
                    if self.stop_when_cut:
                        return
                    continue
                with self._lock:
                    if r.status_code == 200:
                        self.answered.append(r.json()["id"])
                    elif self.refusal(r):
                        self.refused.append(r.headers["x-request-id"])
                    else:
                        self.other.append((r.status_code, r.text[:200]))

    def also(self, target: Callable[[], None]) -> threading.Thread:
        """Run `target` in a thread of its own, joined (and checked for a hang) with the clients."""
        thread = threading.Thread(target=target)
        self._threads.append(thread)
        thread.start()
        return thread

    def wait_for(self, answered: int) -> None:
        """Until the clients have `answered` answers in all, or the deadline; the caller asserts the count."""
        while len(self.answered) < answered and time.monotonic() < self.deadline:
            time.sleep(0.05)

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.join_timeout)
        self.hung = [t for t in self._threads if t.is_alive()]


def assert_billed_exactly(ledger_ids: list[str], answered: list[str], *, before: list[str] = (),
                          refused: list[str] = (), unanswered_at_most: int = 0) -> None:
    """The ledger rows written since `before` hold every answered request exactly once and no refused one. A row
    without an answer the clients saw is allowed `unanswered_at_most` times: a request answered by a server
    that was killed before its response was sent (its row was written first) is one."""
    assert len(ledger_ids) == len(set(ledger_ids)), "a request was billed twice"
    assert len(answered) == len(set(answered))
    new = set(ledger_ids) - set(before)
    missing = set(answered) - new
    assert not missing, f"{len(missing)} answered requests are not in the ledger"
    assert not set(refused) & new, "a refused request was billed"
    unanswered = new - set(answered)
    print(f"answered {len(answered)}, ledger rows {len(new)}, rows without an answer {len(unanswered)}")
    assert len(unanswered) <= unanswered_at_most, f"{len(unanswered)} rows without a 200 the clients saw"
