"""Two real `lastrank serve` processes on one PostgreSQL store (as replicas behind a load balancer would be):
a SIGKILL of one under load loses no billed request and bills none twice, and a key's rate limit is
counted once across both. (These are plain server processes; Ray Serve replicas: tests/deploy/test_ray_serve.py.)"""

from __future__ import annotations

import threading
import time

import httpx

from support import postgres_server
from lastrank.store import open_store
from support.server_process import DOCS, QUERY, ServerProcess, create_key


def test_two_servers_one_ledger_one_allowance(tiny_checkpoint, tmp_path):
    with postgres_server.database() as url:
        # --db takes a postgresql:// URL as well as a path (ServerProcess passes --db)
        servers = [ServerProcess(tiny_checkpoint, url, tmp_path / f"server{i}.log") for i in range(2)]
        for s in servers:
            s.start()
        try:
            _rate_limit_counted_once(servers, url)
            _under_load_kill_one(servers, url)
        finally:
            for s in servers:
                s.stop()


def _under_load_kill_one(servers: list[ServerProcess], url: str) -> None:
    a, b = servers
    key = create_key(url, "load")
    auth = {"Authorization": f"Bearer {key}"}
    received: list[str] = []
    other_statuses: list[int] = []
    failed_in_flight = 0
    lock = threading.Lock()
    stop = threading.Event()

    def worker(n: int) -> None:
        nonlocal failed_in_flight
        with httpx.Client(timeout=30, headers=auth) as http:
            i = 0
            while not stop.is_set():
                i += 1
                srv = servers[(n + i) % 2]
                if srv.proc.poll() is not None:
                    srv = b  # the load balancer stops sending to the dead one
                docs = [f"{d} ({n}-{i})" for d in DOCS]
                try:
                    r = http.post(srv.url + "/v1/rerank", json={"query": QUERY, "documents": docs})
                except httpx.TransportError:
                    with lock:
                        failed_in_flight += 1
                    continue
                with lock:
                    if r.status_code == 200:
                        received.append(r.json()["id"])
                    else:
                        other_statuses.append(r.status_code)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 90
        while len(received) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        a.kill()
        after_kill = len(received)
        while len(received) < after_kill + 6 and time.monotonic() < deadline:
            time.sleep(0.05)  # the survivor keeps answering
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not other_statuses, other_statuses
    assert len(received) >= 18, b.log()
    assert failed_in_flight >= 1  # the kill really cut requests off

    with open_store(url) as store:
        rows = store.list_usage(key="load")
    ids = [row.request_id for row in rows]
    assert len(ids) == len(set(ids)), "a request was billed twice"
    assert len(received) == len(set(received))
    assert not set(received) - set(ids), "an answered request is not in the ledger"
    # a row may exist for a request answered but cut off by the kill (written before its response was sent)
    assert len(set(ids) - set(received)) <= failed_in_flight


def _rate_limit_counted_once(servers: list[ServerProcess], url: str) -> None:
    """4 requests a minute for the key, across both servers: not 4 each."""
    with open_store(url) as store:
        _, key = store.create_key("limited", requests_per_minute=4)
    auth = {"Authorization": f"Bearer {key}"}
    statuses = [
        httpx.post(srv.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS}, headers=auth,
                   timeout=60).status_code
        for srv in servers * 4
    ]
    assert statuses == [200] * 4 + [429] * 4
    with open_store(url) as store:
        assert store.count_usage(key="limited") == 4
