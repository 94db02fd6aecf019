"""Real uvicorn servers in a thread, for tests that need real sockets: LiveServer, lastrank's app for the API
tests (pipelining, stalls, concurrency) on the same HTTP protocol `lastrank serve` runs (api.app.http_protocol:
header timeout, connection cap); AppServer, any app (the router tests' fake upstreams). On 127.0.0.1 and a free
port.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import uvicorn

from lastrank.api.app import create_app, http_protocol
from lastrank.api.settings import ServerSettings


class AppServer:
    """An ASGI app served by uvicorn in a thread of this process, on 127.0.0.1 and a port bound here (no other
    process can take it between choosing and listening). `with AppServer(app) as srv:` or srv.start() /
    srv.stop(); srv.url, srv.port, srv.connect(), and srv.loop (the server's event loop, once started)."""

    def __init__(self, app, **config):
        self.app = app
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, **{"log_level": "error", **config}))
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve(sockets=[self._sock]))

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        self._sock.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)


class LiveServer(AppServer):
    """with LiveServer(settings, store, scheduler=... | backend=...) as srv: lastrank's app (create_app) on the
    HTTP protocol `lastrank serve` runs, started once the app says it is ready."""

    def __init__(self, settings: ServerSettings, store, **app_kwargs):
        self.settings = settings
        super().__init__(create_app(settings, store, **app_kwargs), http=http_protocol(settings), log_level="warning",
                         timeout_keep_alive=5)

    def start(self) -> None:
        super().start()
        ready = time.monotonic() + 60
        while not self.app.state.lastrank.ready:  # lifespan: the scheduler is started
            if time.monotonic() > ready:
                raise RuntimeError("the test server never became ready")
            time.sleep(0.01)


def read_until_closed(sock: socket.socket, limit_s: float = 10.0) -> tuple[bytes, bool]:
    """Everything the server sends until it closes the connection -> (bytes, closed). closed is False when
    `limit_s` passed with the connection still open (a hang)."""
    data = b""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def read_response(sock: socket.socket, limit_s: float = 10.0) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response with a Content-Length -> (head, body)."""
    data = b""
    deadline = time.monotonic() + limit_s
    while True:
        if b"\r\n\r\n" in data:
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if len(body) >= length:
                return head, body[:length]
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed mid-response: {data!r}")
        data += chunk
