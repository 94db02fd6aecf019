"""The router's cost: a client calling `lastrank serve --config` (one lastrank provider) against the same client
calling that upstream directly.

    python benchmarks/bench_router.py [--seconds 10] [--clients 4] [--documents 10]

Starts a real upstream (`lastrank serve --model minilm`, float32, one API key) and a real router in front of it
(`lastrank serve --config`, one provider, dialect lastrank, its key from an environment variable), both on
loopback with SQLite ledgers in a temporary folder, then:
  - latency: one client, sequential requests of 2 short documents, alternating direct / routed request by
    request (so load drift on a shared machine hits both alike); median and p90 of each, and their difference;
  - throughput: --clients clients in a closed loop, --documents documents each, for --seconds, direct then
    routed; requests/s of 200s;
  - the router process's own CPU time per routed request, and the upstream's per direct request (psutil,
    user + system), the figures that load on the machine moves least.
Prints a markdown table; state the machine (lscpu model name) and `uptime`'s load average beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from bench_ray import free_port, start  # the same `lastrank serve` on a free port, waited for

QUERY = "how long do fleas live"
DOCS = ["Paris is the capital of France.", "Adult fleas live for two to three months.",
        "A flea's life cycle: egg, larva, pupa, adult.", "Tea grows on shrubs.",
        "Fleas can survive a year without a blood meal."]


def latency(targets: dict[str, tuple[str, dict]], seconds: float) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in targets}
    clients = {name: httpx.Client(base_url=url, headers=h, timeout=60) for name, (url, h) in targets.items()}
    body = {"query": QUERY, "documents": DOCS[:2]}
    for c in clients.values():  # warm the connections
        c.post("/v1/rerank", json=body)
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        for name, c in clients.items():
            t = time.perf_counter()
            r = c.post("/v1/rerank", json=body)
            out[name].append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, r.text
    return out


def throughput(url: str, headers: dict, clients: int, documents: int, seconds: float) -> float:
    docs = [DOCS[i % len(DOCS)] + f" ({i})" for i in range(documents)]
    done = [0] * clients
    stop = time.monotonic() + seconds

    def loop(i):
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            while time.monotonic() < stop:
                if c.post("/v1/rerank", json={"query": QUERY, "documents": docs}).status_code == 200:
                    done[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--documents", type=int, default=10)
    a = ap.parse_args()
    from lastrank.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        up_db = folder / "upstream.db"
        store = Store(up_db)
        _, key = store.create_key("router")
        store.close()
        up_port = free_port()
        upstream = subprocess.Popen([sys.executable, "-m", "lastrank", "serve", "--model", "minilm", "--port",
                                     str(up_port), "--dtype", "float32", "--db", str(up_db), "--access-log", "off",
                                     "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
        up_url = f"http://127.0.0.1:{up_port}"
        procs = [upstream]
        try:
            while True:
                try:
                    if httpx.get(up_url + "/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if upstream.poll() is not None:
                    raise RuntimeError("upstream exited")
                time.sleep(0.3)
            config = folder / "router.toml"
            config.write_text(f'[[models]]\nname = "rerank"\n[[models.providers]]\nname = "up"\ndialect = "lastrank"\n'
                              f'base_url = "{up_url}"\napi_key_env = "UP_KEY"\n')
            router, router_url = start(["--config", str(config)], folder, {"UP_KEY": key})
            procs.append(router)
            auth = {"authorization": f"Bearer {key}"}
            lat = latency({"direct": (up_url, auth), "routed": (router_url, {})}, a.seconds)
            cpu = psutil.Process(router.pid)
            before = sum(cpu.cpu_times()[:2])
            routed_rps = throughput(router_url, {}, a.clients, a.documents, a.seconds)
            router_cpu = sum(cpu.cpu_times()[:2]) - before
            up_cpu = psutil.Process(upstream.pid)
            before = sum(up_cpu.cpu_times()[:2])
            direct_rps = throughput(up_url, auth, a.clients, a.documents, a.seconds)
            upstream_cpu = sum(up_cpu.cpu_times()[:2]) - before
        finally:
            for p in procs:
                p.terminate()
                p.wait(30)

    def q(xs, p):
        return statistics.quantiles(xs, n=100)[p - 1]

    d, r = lat["direct"], lat["routed"]
    print(f"| path | latency p50 / p90 (2 docs, 1 client, {len(d)} requests each) | requests/s "
          f"({a.clients} clients x {a.documents} docs) |")
    print("|---|---|---|")
    print(f"| direct to the upstream | {q(d, 50):.1f} / {q(d, 90):.1f} ms | {direct_rps:.1f} |")
    print(f"| through the router | {q(r, 50):.1f} / {q(r, 90):.1f} ms | {routed_rps:.1f} |")
    print(f"\nadded at the median: {q(r, 50) - q(d, 50):.1f} ms; routed/direct requests/s: {routed_rps / direct_rps:.2f}; "
          f"router CPU per routed request: {router_cpu / max(1, routed_rps * a.seconds) * 1000:.2f} ms; "
          f"upstream CPU per direct request (the model included): "
          f"{upstream_cpu / max(1, direct_rps * a.seconds) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
