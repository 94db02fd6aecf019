"""`lastrank serve`: the rerank API server (FastAPI + uvicorn), one or several models.

Every flag comes from the one definition of each setting in api/settings.py (ServerSettings), and every
flag can be set from the environment as LASTRANK_<NAME> (the flag wins). The port is bound before anything
is loaded, so a port in use is one clear line at once. Models load in the background after the port
opens: /health answers at once, /ready says 503 until every model is loaded and warmed up, then 200; a
model that fails to load ends the process (non-zero, its reason on one line). SIGTERM/SIGINT drain: see
api/lifecycle.py.

Auth: when the store holds an active API key, every inference route needs `Authorization: Bearer`.
With no key the server runs open, which is allowed only on a loopback host unless
`--allow-unauthenticated` is given.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING

from lastrank.api.settings import ServerSettings, setting_fields
from lastrank.cli.argtypes import device, nonneg_float, port, positive_int
from lastrank.cli.keys import add_db_argument
from lastrank.errors import LastrankError

ENV_PREFIX = "LASTRANK_"
_KINDS = {"positive_int": positive_int, "nonneg_float": nonneg_float, "port": port, "device": device, "int": int,
          "str": str}


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _env_default(f, environ):
    """The setting's default, or its environment variable parsed like the flag (lists: comma-separated)."""
    default = f.default if f.default is not MISSING else f.default_factory()
    text = environ.get(env_name(f.name))
    if text is None:
        return default
    kind = f.metadata["kind"] or "str"
    try:
        if kind == "bool":
            if text.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if text.strip().lower() in ("0", "false", "no", "off", ""):
                return False
            raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")
        if kind == "list":
            return tuple(x.strip() for x in text.split(",") if x.strip())
        value = _KINDS[kind](text)
    except (argparse.ArgumentTypeError, ValueError) as e:
        raise LastrankError(f"${env_name(f.name)}: {e}") from None
    if f.metadata["choices"] and value not in f.metadata["choices"]:
        raise LastrankError(f"${env_name(f.name)} must be one of {', '.join(f.metadata['choices'])}, got {value!r}")
    return value


def add_setting_arguments(parser: argparse.ArgumentParser, environ=os.environ) -> None:
    """One flag per ServerSettings field, generated from its metadata (help, kind, group, choices)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in setting_fields():
        m = f.metadata
        group = groups.get(m["group"]) or groups.setdefault(m["group"], parser.add_argument_group(m["group"]))
        flag = m["flag"] or "--" + f.name.replace("_", "-")
        default = _env_default(f, environ)
        help_text = m["help"] + f" (env {env_name(f.name)}"
        kind = m["kind"]
        if kind == "bool":
            group.add_argument(flag, dest=f.name, action="store_true", default=default, help=help_text + ")")
            continue
        if kind == "list":
            shown = ", ".join(default) if default else "none"
            group.add_argument(flag, dest=f.name, action="append", default=None, metavar=m["metavar"],
                               help=help_text + f", comma-separated; default: {shown})")
            parser.set_defaults(**{f"_default_{f.name}": default})
            continue
        group.add_argument(flag, dest=f.name, type=_KINDS[kind or "str"], default=default, choices=m["choices"],
                           metavar=m["metavar"], help=help_text + "; default: %(default)s)")


def settings_from_args(args: argparse.Namespace):
    """ServerSettings from the parsed flags: a repeated flag replaces its default list; 0 turns off a
    setting whose 0 means "off"."""
    values = {}
    for f in setting_fields():
        value = getattr(args, f.name)
        if f.metadata["kind"] == "list" and value is None:
            value = getattr(args, f"_default_{f.name}")
        if f.metadata["zero_is_none"] and value == 0:
            value = None
        values[f.name] = value
    return ServerSettings(**values)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="run the rerank API server",
        description="Serve one or several models over HTTP: Jina and Cohere v1 on /v1/rerank, Cohere v2 on "
                    "/v2/rerank, TEI (or Jina) on /rerank, routed by the request's `model`; /v1/models, "
                    "/health, /ready, /metrics, /docs, /playground. Every flag can also be set from the "
                    f"environment as {ENV_PREFIX}<FLAG NAME> (e.g. {ENV_PREFIX}MAX_DOCUMENTS=500).")
    add_db_argument(p)
    add_setting_arguments(p)
    p.set_defaults(handler="lastrank.cli.commands.serve:run")
