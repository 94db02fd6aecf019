"""Two real `lastrank serve` processes on one PostgreSQL store (as replicas behind a load balancer would be):
a SIGKILL of one under load loses no billed request and bills none twice, and a key's rate limit is
counted once across both. (These are plain server processes; Ray Serve replicas: tests/deploy/test_ray_serve.py.)"""

from __future__ import annotations

import httpx

from support import postgres_server
from lastrank.store import open_store
from support.kill_under_load import Load, assert_billed_exactly
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

    def live(n: int, i: int) -> str:
        srv = servers[(n + i) % 2]
        return (b if srv.proc.poll() is not None else srv).url  # the load balancer stops sending to the dead one

    with Load(live, QUERY, DOCS, clients=6, seconds=90, headers={"Authorization": f"Bearer {key}"}) as load:
        load.wait_for(12)
        a.kill()
        load.wait_for(len(load.answered) + 6)  # the survivor keeps answering
    assert not load.other, load.other
    assert len(load.answered) >= 18, b.log()
    assert len(load.cut) >= 1  # the kill really cut requests off

    with open_store(url) as store:
        rows = store.list_usage(key="load")
    assert_billed_exactly([row.request_id for row in rows], load.answered, unanswered_at_most=len(load.cut))


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
