"""How a real `lastrank serve` process starts and ends (api/lifecycle.py, cli/commands/serve.py): --port and --device
checked before anything is bound or loaded, --port 0 printing the port it got, a model that cannot load
ending the process with its reason, and SIGTERM draining: the request running finishes (200), the one queued
behind it is answered a JSON 503 + Retry-After at once, one line, exit 0 within --shutdown-timeout-s."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import pytest

from lastrank.cli import serve
from lastrank.cli.commands.serve import bind_socket
from lastrank.errors import LastrankError
from support.server_process import LISTENING, is_ready, wait_until

MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # the packaged real model (offline)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONUNBUFFERED": "1"}


@contextmanager
def serving(tmp_path, *args: str):
    """`lastrank serve *args` as a process, its ledger and log (stderr) in tmp_path: yields (proc, log); killed
    at the end if the test left it running."""
    log = tmp_path / "serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "lastrank", "serve", "--db", str(tmp_path / "x.db"), *args],
                                stdout=subprocess.DEVNULL, stderr=err, env=ENV)
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def parse(argv, environ=None):
    parser = argparse.ArgumentParser()
    serve.add_setting_arguments(parser, environ=environ or {})
    return serve.settings_from_args(parser.parse_args(argv))


# ------------------------------------------------------------------------------------------ --port, --device

def test_port_must_be_a_tcp_port(capsys):
    assert parse(["--port", "0"]).port == 0 and parse(["--port", "65535"]).port == 65535
    for bad in ("99999", "-1", "65536"):
        with pytest.raises(SystemExit):
            parse(["--port", bad])
        assert "argument --port: must be 0-65535" in capsys.readouterr().err
    with pytest.raises(LastrankError, match="LASTRANK_PORT: must be 0-65535"):
        parse([], {"LASTRANK_PORT": "99999"})
    with pytest.raises(LastrankError, match="not a TCP port"):  # embedders calling bind_socket directly
        bind_socket("127.0.0.1", 99999)  # (getaddrinfo would bind 99999 % 65536 = 34463)


def test_device_is_checked_before_the_port_is_bound(tmp_path, capsys):
    assert [parse(["--device", d]).device for d in ("cpu", "auto", "cuda", "CUDA:1")] == ["cpu", "auto", "cuda",
                                                                                          "cuda:1"]
    for bad in ("gpu", "cuda:x", "tpu"):
        with pytest.raises(SystemExit):
            parse(["--device", bad])
        assert f"argument --device: not a device: '{bad}'" in capsys.readouterr().err
    import torch

    if torch.cuda.is_available():
        return  # the rest is about a machine without CUDA
    # A busy port: an error about the port would mean the device was checked after binding it.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "lastrank", "serve", "--device", "cuda", "--port", str(port),
                              "--db", str(tmp_path / "x.db")], capture_output=True, text=True, timeout=120, env=ENV)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["lastrank: error: device 'cuda' requested but CUDA is not "
                                               "available here"]


# ------------------------------------------------------------------------------------------ real processes

def test_port_0_serves_on_the_port_it_prints_and_sigterm_exits_0(tmp_path):
    with serving(tmp_path, "--model", MODEL, "--port", "0") as (proc, log):
        wait_until(lambda: LISTENING.search(log.read_text()), 120, proc, log.read_text)
        port = int(LISTENING.search(log.read_text()).group(1))
        assert port != 0
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json() == {"status": "ok"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    assert "lastrank: SIGTERM: stopped in" in log.read_text()


def test_sigterm_while_the_model_loads_exits_without_waiting_for_the_load(tmp_path):
    """The loader thread cannot be stopped, and asyncio.run waits for it at exit: before, SIGTERM during start-up
    took as long as the rest of the load (minutes for a large model). The load is held, not raced: the model's
    Pooling config is a named pipe nobody writes, so the loader thread blocks opening it for as long as the test
    likes (a load racing the signal finished first on a fast machine, and the test failed)."""
    from lastrank.model.resolve import resolve_checkpoint

    folder = tmp_path / "held"
    shutil.copytree(resolve_checkpoint(MODEL), folder)
    (folder / "1_Pooling" / "config.json").unlink()
    os.mkfifo(folder / "1_Pooling" / "config.json")
    with serving(tmp_path, "--model", str(folder), "--port", "0") as (proc, log):
        wait_until(lambda: "Application startup complete" in log.read_text(), 120, proc, log.read_text)
        url = f"http://127.0.0.1:{LISTENING.search(log.read_text()).group(1)}"
        time.sleep(1)
        assert proc.poll() is None and not is_ready(url), log.read_text()  # still loading: held at the pipe
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    text = log.read_text()
    assert rc == 0, text
    assert "lastrank: SIGTERM: stopped in" in text and "loaded and warmed up" not in text, text
    assert "Traceback" not in text and "terminate called" not in text, text


def test_a_model_that_cannot_load_ends_the_server_with_its_reason(tmp_path):
    """A corrupt folder (its family is detected, its weights do not load): before, the server stayed up with
    /ready 503 forever; now it exits non-zero with the reason."""
    from lastrank.model.resolve import resolve_checkpoint

    folder = tmp_path / "corrupt"
    shutil.copytree(resolve_checkpoint(MODEL), folder)
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with serving(tmp_path, "--model", str(folder), "--port", "0") as (proc, log):
        try:
            rc = proc.wait(120)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the server kept running with no model it could serve:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    assert rc == 2, text
    assert text.strip().splitlines()[-1].startswith("lastrank: error: the model 'corrupt' failed to load: "), text
    assert text.strip().endswith("; exiting")


def test_a_refused_dtype_ends_the_server_in_one_line_without_a_traceback(tiny_checkpoint, tmp_path):
    """dtype int8 for a family without an int8 path is a refusal with its reason (ModelNotAvailableError): the
    server exits 2 with that one line; before, it first logged the refusal's traceback."""
    args = ("--model", str(tiny_checkpoint), "--dtype", "int8", "--port", "0")
    with serving(tmp_path, *args) as (proc, log):
        rc = proc.wait(120)
    text = log.read_text()
    assert rc == 2, text
    assert "Traceback" not in text and "ERROR" not in text, text
    last = text.strip().splitlines()[-1]
    assert last.startswith("lastrank: error: the model ") and "dtype int8 is implemented for the bi-encoder" in last
    assert last.endswith("; exiting")


LONG_DOCS = 300  # ~21k tokens of MiniLM: one batch of several seconds on a 2-core machine (about 14 s, loaded)
LONG = [f"document {i}: adult fleas live two to three months in the carpet of a house " * 4 for i in range(LONG_DOCS)]
# The request the shutdown timeout cuts must still be in the model 1 s after the signal, on a CI machine that may be
# several times faster than this one (it loaded MiniLM in 0.14 s): ~58k tokens, still one batch (--max-batch-tokens
# 65536), about 3x LONG's work. It is cut, never finished, so its size costs the test no time.
LONGER = [f"document {i}: adult fleas live two to three months in the carpet of a house " * 4 for i in range(800)]


@contextmanager
def one_batch_server(tmp_path, shutdown_timeout_s: int):
    """A ready `lastrank serve` of MiniLM in which one batch holds the whole LONG request (--max-batch-tokens), so
    a request sent while it runs waits in the queue, none of its blocks started, until the signal. Yields (proc,
    url, log); killed at the end if the test left it running."""
    with serving(tmp_path, "--model", MODEL, "--port", "0", "--dtype", "float32", "--access-log", "off",
                 "--max-batch-tokens", "65536", "--request-timeout-s", "0",
                 "--shutdown-timeout-s", str(shutdown_timeout_s)) as (proc, log):
        wait_until(lambda: LISTENING.search(log.read_text()), 180, proc, log.read_text)
        url = f"http://127.0.0.1:{LISTENING.search(log.read_text()).group(1)}"  # the port it bound (--port 0)
        wait_until(lambda: is_ready(url), 180, proc, log.read_text)
        yield proc, url, log


def wait_long_running(proc, url, log) -> None:
    """Until the LONG (or LONGER) request is running: admitted, and no token of it left waiting (its one batch is
    in the model)."""
    wait_until(lambda: metric(url, "lastrank_queue_requests") == 1 and metric(url, "lastrank_queue_tokens") == 0,
               60, proc, log.read_text)


def test_sigterm_drains_running_work_answers_the_queue_503_and_exits_0(tmp_path):
    answers: dict[str, httpx.Response] = {}
    threads = []
    with one_batch_server(tmp_path, shutdown_timeout_s=120) as (proc, url, log):
        def post(name: str, documents: list[str]) -> None:
            answers[name] = httpx.post(url + "/v1/rerank", json={"query": "how long do fleas live",
                                                                "documents": documents}, timeout=300)

        threads.append(threading.Thread(target=post, args=("long", LONG)))
        threads[-1].start()
        wait_long_running(proc, url, log)
        threads.append(threading.Thread(target=post, args=("queued", ["fleas", "tea", "Paris"])))
        threads[-1].start()
        wait_until(lambda: metric(url, "lastrank_queue_requests") == 2 and metric(url, "lastrank_queue_tokens") > 0,
                   60, proc, log.read_text)
        before = len(log.read_text())
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(150)
        stopped_after = time.monotonic() - signalled
        for t in threads:
            t.join(60)
    text = log.read_text()
    assert rc == 0, text
    assert stopped_after < 120, text  # within --shutdown-timeout-s
    long, queued = answers["long"], answers["queued"]
    assert long.status_code == 200 and len(long.json()["results"]) == LONG_DOCS, long.text[:300]
    assert queued.status_code == 503 and queued.headers["retry-after"] == "1", queued.text
    assert queued.json()["error"] == {"message": "the server is shutting down; retry", "type": "overloaded_error",
                                      "code": 503}
    after = text[before:].strip().splitlines()
    assert len(after) == 1 and after[0].startswith("lastrank: SIGTERM: stopped in "), after
    assert "1 running request(s) finished, 1 queued or arriving answered 503, 0 cut" in after[0]
    for noise in ("Traceback", "CancelledError", "never retrieved", "Internal Server Error"):
        assert noise not in text, text


def test_sigterm_cuts_what_outlasts_the_shutdown_timeout_with_a_503(tmp_path):
    answers: list[httpx.Response] = []
    with one_batch_server(tmp_path, shutdown_timeout_s=1) as (proc, url, log):
        thread = threading.Thread(target=lambda: answers.append(httpx.post(
            url + "/v1/rerank", json={"query": "fleas", "documents": LONGER}, timeout=300)))
        thread.start()
        wait_long_running(proc, url, log)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        stopped_after = time.monotonic() - signalled
        thread.join(60)
    text = log.read_text()
    # 0, not the SIGABRT of an interpreter exiting under a batch still inside torch
    assert rc == 0, text
    assert stopped_after < 1 + 5, text  # the timeout, plus the process's own exit on a loaded machine
    (cut,) = answers
    assert cut.status_code == 503 and cut.headers["retry-after"] == "1", cut.text
    assert cut.json()["error"]["type"] == "overloaded_error"
    assert "0 running request(s) finished, 0 queued or arriving answered 503, 1 cut" in text
    assert "Traceback" not in text and "terminate called" not in text, text


def metric(url: str, name: str) -> float:
    """A model's gauge from /metrics (one model served)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return float(re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M).group(1))
