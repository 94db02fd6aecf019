"""A real `lastrank serve` process for tests that go over the wire (real clients, eval --server, the
browser playground, several processes on one PostgreSQL store)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import httpx

# What the tests over the wire send: a query and eight documents with a ranking that is not the input
# order on the tiny checkpoint (tests/api/test_real_clients.py::test_reference_order_is_not_trivial).
QUERY = "how do solar panels turn light into electricity"
DOCS = [
    "Photovoltaic cells convert sunlight directly into electric current using semiconductors.",
    "The stock market closed higher on Friday after a volatile week.",
    "Wind turbines generate power from moving air.",
    "Bananas are a good source of potassium.",
    "Solar panels are made of silicon wafers arranged in modules.",
    "The history of the Roman Empire spans more than a thousand years.",
    "Electric cars need charging stations along highways.",
    "Light is made of photons that can knock electrons loose in a material.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`lastrank serve --model MODEL` as a real process on a loopback port, float32, quiet logs. The server binds
    --port 0 itself and the port it prints is read from its log (a port chosen here and bound there could be
    taken in between); `port` and `url` are known once started, and a restart may get another port.
    start() waits for /ready (failing with the server's log), stop() terminates, kill() SIGKILLs."""

    def __init__(self, checkpoint: Path | str, db: Path, log: Path, extra: list[str] = ()):
        self.checkpoint, self.db, self.log_path, self.extra = checkpoint, db, log, list(extra)
        self.port: int | None = None
        self.url: str | None = None
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self._log = open(self.log_path, "ab")
        before = self._log.tell()  # a restart appends to the same log: read the new process's lines only
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lastrank", "serve", "--model", str(self.checkpoint), "--port", "0",
             "--db", str(self.db), "--dtype", "float32", "--access-log", "off", "--log-level", "warning", *self.extra],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout

        def listening() -> bool:
            with open(self.log_path, "rb") as f:
                f.seek(before)
                found = LISTENING.search(f.read().decode(errors="replace"))
            if found:
                self.port = int(found.group(1))
                self.url = f"http://127.0.0.1:{self.port}"
            return found is not None

        wait_until(listening, timeout, self.proc, self.log)
        wait_until(lambda: is_ready(self.url), max(0.0, deadline - time.monotonic()), self.proc, self.log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()


# What `lastrank serve` prints once it has bound its port (cli/commands/serve.py), --port 0 included.
LISTENING = re.compile(r"lastrank: listening on http://127\.0\.0\.1:(\d+) ")


def is_ready(url: str) -> bool:
    try:
        return httpx.get(url + "/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_until(condition: Callable[[], object], timeout: float, proc: subprocess.Popen, log: Callable[[], str]) -> None:
    """Until condition() holds, while the server process `proc` runs: its exit, or `timeout` seconds, fails with
    the end of log()."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{log()[-4000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s:\n{log()[-4000:]}")


def create_key(db: Path, name: str) -> str:
    out = subprocess.run([sys.executable, "-m", "lastrank", "keys", "create", "--name", name, "--db", str(db)],
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


@contextmanager
def served_with_key(checkpoint: Path, tmp: Path):
    """A real `lastrank serve` of `checkpoint` (ledger, log in `tmp`) and one API key: yields (url, key)."""
    from lastrank.store import Store

    store = Store(tmp / "ledger.db")
    _, key = store.create_key("test")
    store.close()
    srv = ServerProcess(checkpoint, tmp / "ledger.db", tmp / "server.log")
    try:
        srv.start()
        yield srv.url, key
    finally:
        srv.stop()
