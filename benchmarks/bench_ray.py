"""The Ray path against plain `lastrank serve`: the latency the hop adds, and requests/s with 1 and 2 replicas.

    python benchmarks/bench_ray.py [--seconds 15] [--clients 4] [--documents 10]

Starts each server as a real process on loopback (the real all-MiniLM-L6-v2, float32, a SQLite ledger in a
temporary folder), waits for /ready, then:
  - latency: one client, sequential requests of 2 short documents, for --seconds; the median and p90;
  - throughput: --clients clients in a closed loop, requests of --documents documents, for --seconds;
    requests/s of 200s.
Servers: plain `serve`, `serve --ray --replicas 1`, `serve --ray --replicas 2` (a local Ray cluster each).
The machine's core count bounds what 2 replicas can gain: state it with the numbers.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

QUERY = "how long do fleas live"
DOCS = ["Paris is the capital of France.", "Adult fleas live for two to three months.",
        "A flea's life cycle: egg, larva, pupa, adult.", "Tea grows on shrubs.",
        "Fleas can survive a year without a blood meal."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(extra: list[str], folder: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`lastrank serve` (float32, its own ledger, quiet logs) with `extra` flags on a free port, once /ready is
    200; `env` is added to this process's environment (bench_router.py starts its router with it too)."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    log = open(folder / f"serve-{port}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "lastrank", "serve", "--port", str(port), "--dtype", "float32",
                             "--db", str(folder / f"ledger-{port}.db"), "--access-log", "off", "--log-level", "warning",
                             *extra], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(folder / f'serve-{port}.log').read_text()[-2000:]}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("not ready in 300 s")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def latency(url: str, seconds: float) -> tuple[float, float, int]:
    times = []
    with httpx.Client(timeout=60) as http:
        for _ in range(5):  # warm-up
            http.post(url + "/v1/rerank", json={"query": QUERY, "documents": DOCS[:2]})
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.perf_counter()
            r = http.post(url + "/v1/rerank", json={"query": QUERY, "documents": DOCS[:2]})
            times.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
    times.sort()
    return statistics.median(times) * 1000, times[int(0.9 * (len(times) - 1))] * 1000, len(times)


def throughput(url: str, seconds: float, clients: int, documents: int) -> tuple[float, int]:
    docs = [f"{DOCS[i % len(DOCS)]} ({i})" for i in range(documents)]
    ok, other = [0], [0]
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < end:
                r = http.post(url + "/v1/rerank", json={"query": QUERY, "documents": docs})
                with lock:
                    (ok if r.status_code == 200 else other)[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ok[0] / (time.monotonic() - started), other[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--documents", type=int, default=10)
    args = p.parse_args()
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at start", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in [("serve", []), ("serve --ray --replicas 1", ["--ray", "--replicas", "1"]),
                            ("serve --ray --replicas 2", ["--ray", "--replicas", "2"])]:
            proc, url = start(extra, Path(tmp))
            try:
                p50, p90, n = latency(url, args.seconds)
                rps, refused = throughput(url, args.seconds, args.clients, args.documents)
            finally:
                stop(proc)
            rows.append((name, p50, p90, n, rps, refused))
            print(f"{name}: latency p50 {p50:.1f} ms, p90 {p90:.1f} ms ({n} requests); "
                  f"{rps:.1f} requests/s with {args.clients} clients x {args.documents} documents "
                  f"({refused} not 200)", flush=True)
    print(f"\n| server | p50 ms (2 docs) | p90 ms | requests/s ({args.clients} clients, {args.documents} docs) |")
    print("|---|---|---|---|")
    for name, p50, p90, n, rps, refused in rows:
        print(f"| `{name}` | {p50:.1f} | {p90:.1f} | {rps:.1f} |")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
