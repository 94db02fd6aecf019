"""`lastrank serve` (parser: cli/serve.py, whose docstring says what it does): bind the port, open the store,
check auth, build the served models (or the router's), run the app under uvicorn, or under Ray with --ray."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import socket
import sys
import urllib.request

import uvicorn

from lastrank.api.app import create_app, http_protocol
from lastrank.api.lifecycle import Server
from lastrank.api.logs import configure_logging
from lastrank.api.models import served_models
from lastrank.api.ray import run as run_on_ray
from lastrank.cli.commands.keys import open_store
from lastrank.cli.serve import settings_from_args
from lastrank.errors import LastrankError
from lastrank.router import load_config, preflight
from lastrank.router import routed_models as from_config


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind (and listen) now, before any model is loaded, so a port in use is one clear error at once.
    Port 0: the system picks a free one (sock.getsockname() says which)."""
    if not 0 <= port <= 65535:  # getaddrinfo would take 99999 modulo 65536 and bind that
        raise LastrankError(f"port {port} is not a TCP port (0-65535; 0: a free port)")
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            running = running_lastrank(host, port)
            if running:  # e.g. the README's set-up command pasted a second time: say where the first one is
                raise LastrankError(f"port {port} on {host} is already in use by a running lastrank server "
                                    f"({running}); use that one, stop it first, or pass --port for a second "
                                    "server") from None
            raise LastrankError(f"port {port} on {host} is already in use (another lastrank serve?); "
                                "stop that process or pass --port") from None
        raise LastrankError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def running_lastrank(host: str, port: int) -> str | None:
    """What a lastrank server holding host:port serves ("models a, b; playground http://.../playground"), from
    its `GET /` (one second at most); None for anything else, or no answer."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    url = f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"
    try:
        # straight to the address, never through an $http_proxy
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url + "/", timeout=1.0) as r:
            root = json.loads(r.read(65536))
    except Exception:  # not answering, not HTTP, not JSON: not a lastrank server
        return None
    if not isinstance(root, dict) or root.get("name") != "lastrank":
        return None
    models = ", ".join(str(m) for m in root.get("models") or []) or "none"
    return f"models {models}; playground {url}/playground"


def routed_models(settings) -> list:
    """--config: the router's served models (lastrank/router), each a RoutedRunner over its providers."""
    if settings.ray:
        raise LastrankError("--config (the router) does not run under --ray")
    if settings.served_model_name or settings.model_alias:
        raise LastrankError("--served-model-name and --model-alias do not apply with --config: name the models "
                            "and their aliases in the config file")
    models = from_config(settings, load_config(settings.config))
    preflight(models)  # a wrong config (mixed score rules, a wrong upstream model name) is one line here
    return models


def check_device(settings) -> None:
    """--device checked before the port is bound: a device this machine lacks (cuda without CUDA) is one
    error line at once, not a server whose model never loads. Not with --ray: the replicas may run on other
    nodes. torch is imported only for cuda or mps (cpu and auto always resolve)."""
    if settings.device not in ("cpu", "auto") and not settings.ray:
        from lastrank.model.loading import resolve_device

        resolve_device(settings.device)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    check_device(settings)
    sock = bind_socket(settings.host, settings.port)
    # --port 0: the port the system picked, for the lines below (and Ray's proxy)
    settings = dataclasses.replace(settings, port=sock.getsockname()[1])
    try:
        store = open_store(args)
    except BaseException:
        sock.close()
        raise
    try:
        keys = store.has_active_keys()
        if not keys and not settings.loopback and not settings.allow_unauthenticated:
            raise LastrankError(
                f"refusing to serve on {settings.host} without API keys: anyone who can reach it could use it. "
                f"Create a key (lastrank keys create --name NAME --store {store.location}), listen on 127.0.0.1, "
                "or pass --allow-unauthenticated")
        models = served_models(settings) if settings.config is None else routed_models(settings)
        if settings.ray:  # the same app in Ray Serve replicas (api/ray.py); Ray's proxy takes the port
            return run_on_ray(settings, store, models, held_socket=sock)
        app = create_app(settings, store, models=models)
        shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host
        if keys:
            mode = "API keys required (Authorization: Bearer <key>)"
        elif settings.loopback:
            mode = "OPEN: no API keys exist, so anyone on this machine may call it (loopback only)"
        else:
            mode = "OPEN: no API keys and --allow-unauthenticated: anyone who can reach this address may call it"
        for m in models:
            print(f"lastrank: serving {m.name} from {m.model_id}", file=sys.stderr)
        print(f"lastrank: listening on http://{shown_host}:{settings.port} (playground: /playground, docs: /docs)",
              file=sys.stderr)
        print(f"lastrank: auth: {mode}; once a key exists, keys are required", file=sys.stderr)
        print(f"lastrank: ledger: {store.location}; /ready turns 200 once every model is loaded", file=sys.stderr,
              flush=True)
        configure_logging(settings)
        config = uvicorn.Config(app, log_level=settings.log_level, http=http_protocol(settings),
                                access_log=settings.access_log == "text", log_config=None)

        def leave() -> None:
            # SIGTERM left model work Python cannot stop (a load, or a batch inside torch: api/lifecycle.py).
            # Every request is answered: close what the `finally` below would, and exit without waiting for it.
            sock.close()
            store.close()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

        server = Server(config, app.state.lastrank, settings.shutdown_timeout_s, leave=leave)  # api/lifecycle.py
        server.run(sockets=[sock])
        if server.failed:  # no supervisor or operator is helped by a server whose /ready says 503 forever
            raise LastrankError(f"{server.failed}; exiting")
    finally:
        sock.close()
        store.close()
    return 0
