#!/usr/bin/env python
"""Overload benchmark: goodput of a real `lastrank serve` at 3x its single-client rate (issue 9).

    python benchmarks/bench_overload.py                       # tiny random checkpoint, about 2 minutes
    python benchmarks/bench_overload.py --model /tmp/c --seconds 5 --rounds 8 --load 3
    python benchmarks/bench_overload.py --pythonpath /tmp/old/src   # the same against another source tree

What it does, all on 127.0.0.1:
  1. starts `lastrank serve` on the checkpoint (made with `lastrank make-checkpoint --preset jina-v3-tiny` when
     --model is not given) with one API key, so every request is authenticated as in production, and a
     small admission queue (--max-queued-requests) so that overload is shed with 503s;
  2. single client: one connection, one request after another, for --seconds: the rate r1 of 200s;
  3. overload: requests arrive open-loop at --load x r1 per second (a fixed schedule, whatever the
     answers), sent by a bounded pool of --clients threads with keep-alive connections, for --seconds;
     goodput = 200s per second, reported as a ratio to r1, with the 503s, other statuses, latency of the
     200s, and the server's CPU time per delivered 200 (from /proc; the clients are not counted); and,
     per phase, the CPU-seconds per second the server and the client threads used, with the load average
     (the clients share the machine's CPUs with the server; remote clients would not);
  4. repeats for --rounds: short single-client and overload phases alternate, so both see the same
     background load on a shared machine; the pooled ratio is all overload 200s per overload second over
     all single-client 200s per single-client second (per-round ratios are printed too).

Each request: a query and --docs short documents, Jina dialect. Results and the machine: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WORDS = ("tea green health study leaf water brew drink morning science plant garden market river mountain "
         "history culture music book story light train road computer network model token query passage").split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body(i: int, n_docs: int) -> bytes:
    docs = [" ".join(WORDS[(i + j * 7 + k) % len(WORDS)] for k in range(12)) for j in range(n_docs)]
    return json.dumps({"query": f"{WORDS[i % len(WORDS)]} benefits {i}", "documents": docs, "top_n": 3}).encode()


def server_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class Server:
    def __init__(self, args, tmp: Path):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
        if args.pythonpath:
            env["PYTHONPATH"] = args.pythonpath + os.pathsep + env.get("PYTHONPATH", "")
        self.env = env
        db = tmp / "ledger.db"
        out = subprocess.run([sys.executable, "-m", "lastrank", "keys", "create", "--name", "bench", "--db", str(db)],
                             capture_output=True, text=True, check=True, env=env)
        self.key = out.stdout.strip().splitlines()[-1]
        self.port = free_port()
        self.log = open(tmp / "server.log", "wb")
        usage = subprocess.run([sys.executable, "-m", "lastrank", "serve", "--help"], capture_output=True, text=True,
                               env=env).stdout
        quiet = ["--no-access-log"] if "--no-access-log" in usage else ["--access-log", "off"]  # older / newer CLI
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lastrank", "serve", "--model", str(args.model), "--port", str(self.port),
             "--db", str(db), *quiet, "--log-level", "warning",
             "--max-queued-requests", str(args.max_queued_requests), *args.serve_arg],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {(tmp / 'server.log').read_text()[-2000:]}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/ready")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit("server not ready after 300 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Client:
    """One keep-alive connection; reconnects when the server closed it."""

    def __init__(self, port: int, key: str):
        self.port = port
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.conn: http.client.HTTPConnection | None = None

    def post(self, data: bytes) -> int:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                self.conn.request("POST", "/v1/rerank", body=data, headers=self.headers)
                r = self.conn.getresponse()
                r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r.status
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    return -1  # a dropped connection, twice
        return -1


def single_client(srv: Server, seconds: float, n_docs: int) -> dict:
    c = Client(srv.port, srv.key)
    ok = other = 0
    cpu0, client0, t0 = server_cpu_s(srv.proc.pid), time.process_time(), time.monotonic()
    i = 0
    while time.monotonic() - t0 < seconds:
        status = c.post(body(i, n_docs))
        i += 1
        ok += status == 200
        other += status != 200
    elapsed = time.monotonic() - t0
    cpu = server_cpu_s(srv.proc.pid) - cpu0
    return {"rate": ok / elapsed, "ok": ok, "other": other, "cpu_ms_per_200": 1000 * cpu / max(ok, 1),
            "client_cpu": (time.process_time() - client0) / elapsed, "server_cpu": cpu / elapsed}


def overload(srv: Server, seconds: float, rate: float, n_clients: int, n_docs: int) -> dict:
    """Open loop: request i is due at t0 + i / rate; a pool of n_clients threads sends them."""
    due: queue.Queue = queue.Queue()
    results: list[tuple[int, float, float]] = []  # (status, finished at, latency)
    lock = threading.Lock()
    late = [0]

    def worker():
        c = Client(srv.port, srv.key)
        while True:
            item = due.get()
            if item is None:
                return
            i, when = item
            start = time.monotonic()
            status = c.post(body(i, n_docs))
            end = time.monotonic()
            with lock:
                results.append((status, end, end - start))
                if start - when > 0.5:
                    late[0] += 1  # every client was busy: the offered load was not fully applied

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(n_clients)]
    for t in threads:
        t.start()
    cpu0, client0, t0 = server_cpu_s(srv.proc.pid), time.process_time(), time.monotonic()
    n = int(seconds * rate)
    for i in range(n):
        when = t0 + i / rate
        delay = when - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        due.put((i, when))
    for _ in threads:
        due.put(None)
    for t in threads:
        t.join(300)
    window_end = t0 + seconds
    elapsed = time.monotonic() - t0
    cpu = server_cpu_s(srv.proc.pid) - cpu0
    client_cpu = time.process_time() - client0
    ok_in_window = sum(1 for s, end, _ in results if s == 200 and end <= window_end)
    ok = [lat for s, _, lat in results if s == 200]
    statuses: dict[int, int] = {}
    for s, _, _ in results:
        statuses[s] = statuses.get(s, 0) + 1
    return {
        "offered_per_s": n / seconds,
        "goodput": ok_in_window / seconds,
        "statuses": dict(sorted(statuses.items())),
        "late_sends": late[0],
        "p50_ms": 1000 * statistics.median(ok) if ok else None,
        "p99_ms": 1000 * statistics.quantiles(ok, n=100)[98] if len(ok) >= 2 else None,
        "cpu_ms_per_200": 1000 * cpu / max(len(ok), 1),
        "client_cpu": client_cpu / elapsed,  # CPU-seconds per second of the client threads (this process)
        "server_cpu": cpu / elapsed,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint folder (default: a tiny random one, made here)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each phase (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=8, help="single-client + overload pairs (default: %(default)s)")
    p.add_argument("--load", type=float, default=3.0, help="offered load, times the single-client rate (default: 3)")
    p.add_argument("--clients", type=int, default=32, help="client threads for the overload (default: 32)")
    p.add_argument("--docs", type=int, default=20, help="documents per request (default: %(default)s)")
    p.add_argument("--max-queued-requests", type=int, default=4, help="the server's admission queue (default: 4)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the server (default: 1)")
    p.add_argument("--pythonpath", help="put this source tree first on the server's PYTHONPATH (a before/after run)")
    p.add_argument("--serve-arg", action="append", default=[], help="extra `lastrank serve` argument (repeatable)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        tmp = Path(tmp)
        if args.model is None:
            args.model = tmp / "ckpt"
            subprocess.run([sys.executable, "-m", "lastrank", "make-checkpoint", str(args.model), "--preset", "jina-v3-tiny"],
                           check=True, capture_output=True)
        srv = Server(args, tmp)
        rounds = []
        try:
            single_client(srv, min(3.0, args.seconds), args.docs)  # warm-up: caches, the prefix, the allocator
            for r in range(args.rounds):
                one = single_client(srv, args.seconds, args.docs)
                over = overload(srv, args.seconds, args.load * one["rate"], args.clients, args.docs)
                over["ratio"] = over["goodput"] / one["rate"]
                rounds.append({"single": one, "overload": over, "load": os.getloadavg()[0]})
                if not args.json:
                    print(f"round {r + 1}: single client {one['rate']:.1f} req/s "
                          f"({one['cpu_ms_per_200']:.1f} ms server CPU per 200) | offered {over['offered_per_s']:.1f}/s: "
                          f"goodput {over['goodput']:.1f}/s = {over['ratio']:.2f}x, statuses {over['statuses']}, "
                          f"p50 {over['p50_ms']:.0f} ms p99 {over['p99_ms']:.0f} ms, "
                          f"{over['cpu_ms_per_200']:.1f} ms server CPU per 200, {over['late_sends']} late sends; "
                          f"CPU-s/s server {one['server_cpu']:.2f} -> {over['server_cpu']:.2f}, "
                          f"clients {one['client_cpu']:.2f} -> {over['client_cpu']:.2f}; load {os.getloadavg()[0]:.1f}",
                          flush=True)
        finally:
            srv.stop()
    ratios = [r["overload"]["ratio"] for r in rounds]
    single_rate = statistics.fmean(r["single"]["rate"] for r in rounds)  # phases are equally long
    goodput = statistics.fmean(r["overload"]["goodput"] for r in rounds)
    cpu_single = statistics.median(r["single"]["cpu_ms_per_200"] for r in rounds)
    cpu_over = statistics.median(r["overload"]["cpu_ms_per_200"] for r in rounds)
    summary = {"rounds": rounds, "pooled_ratio": goodput / single_rate, "ratio_min": min(ratios),
               "ratio_median": statistics.median(ratios), "single_rate": single_rate, "goodput": goodput,
               "cpu_ms_per_200_single": cpu_single, "cpu_ms_per_200_overload": cpu_over,
               "args": {k: str(v) for k, v in vars(args).items()}}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"at {args.load:g}x offered load over {len(ratios)} rounds: goodput {goodput:.1f}/s vs single client "
              f"{single_rate:.1f}/s = {goodput / single_rate:.2f}x pooled (per round: min {min(ratios):.2f}x, median "
              f"{statistics.median(ratios):.2f}x); server CPU per 200: {cpu_single:.1f} ms single, {cpu_over:.1f} ms "
              f"overloaded (medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
