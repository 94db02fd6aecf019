"""Credit under concurrency: many clients race on one key with a small balance across two real `lastrank serve`
processes on one PostgreSQL store. The sum charged never exceeds the credit granted, every success has exactly
one ledger row, every refusal is a 402 before any work, and the balance is exactly granted - charged."""

from __future__ import annotations

import threading

import httpx

from support import postgres_server
from lastrank.store import open_store
from support.server_process import ServerProcess
from support.threads import in_threads

NANO = 1_000_000_000
QUERY = "how do solar panels turn light into electricity"
DOCS = ["Photovoltaic cells convert sunlight into electric current.", "The market closed higher.",
        "Wind turbines generate power."]
PRICE_NANO = 3 * NANO // 1000  # 3 documents at --price-per-1k-docs 1: 0.003 USD
AFFORDABLE = 7


def test_many_clients_two_servers_one_small_balance(tiny_checkpoint, tmp_path):
    with postgres_server.database() as url:
        with open_store(url) as store:
            granted = AFFORDABLE * PRICE_NANO + PRICE_NANO // 2  # 7.5 requests' worth: the 8th cannot pay
            record, key = store.create_key("racer", credit_usd=granted / NANO)
        servers = [ServerProcess(tiny_checkpoint, url, tmp_path / f"server{i}.log", ["--price-per-1k-docs", "1"])
                   for i in range(2)]
        for s in servers:
            s.start()
        try:
            statuses: list[int] = []
            ids: list[str] = []
            kinds: list[str] = []  # the error types of the refusals
            lock = threading.Lock()

            def client(n: int) -> None:
                with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
                    for i in range(2):
                        r = http.post(servers[(n + i) % 2].url + "/v1/rerank", json={"query": QUERY, "documents": DOCS})
                        with lock:
                            statuses.append(r.status_code)
                            if r.status_code == 200:
                                ids.append(r.json()["id"])
                            else:
                                kinds.append(r.json()["error"]["type"])

            in_threads(12, client, together=True, timeout=120)
        finally:
            for s in servers:
                s.stop()
        assert sorted(set(statuses)) == [200, 402], statuses + [servers[0].log()]
        assert set(kinds) == {"insufficient_credit"}
        assert statuses.count(200) == AFFORDABLE and statuses.count(402) == 24 - AFFORDABLE
        with open_store(url) as store:
            rows = store.list_usage(key="racer")
            balance = store.get_key(record.id).balance_nano_usd
            [acct] = store.credit_accounts("racer")
        charged = sum(round(r.cost_usd * NANO) for r in rows)
        assert sorted(r.request_id for r in rows) == sorted(ids)  # one row per success, none for a 402
        assert charged == AFFORDABLE * PRICE_NANO <= granted
        assert balance == granted - charged == PRICE_NANO // 2
        assert acct["held_usd"] == 0.0 and round(acct["granted_usd"] * NANO) == granted
