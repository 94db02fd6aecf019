"""`lastrank serve`'s settings (one definition: flags and LASTRANK_* variables generated from it), the port
check before loading, and the JSON access log."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys

import pytest

from lastrank.api.settings import DEFAULT_MODEL, ServerSettings, setting_fields
from lastrank.cli import serve
from lastrank.errors import LastrankError


def parse(argv, environ=None):
    parser = argparse.ArgumentParser()
    serve.add_setting_arguments(parser, environ=environ or {})
    return serve.settings_from_args(parser.parse_args(argv))


def test_defaults_are_the_dataclass_defaults():
    assert parse([]) == ServerSettings()
    assert ServerSettings().model == (DEFAULT_MODEL,)


def test_every_setting_has_a_flag_and_an_environment_variable():
    parser = argparse.ArgumentParser()
    serve.add_setting_arguments(parser, environ={})
    by_flag = {s: a for a in parser._actions for s in a.option_strings}
    for f in setting_fields():
        action = by_flag[f.metadata["flag"] or "--" + f.name.replace("_", "-")]
        assert action.dest == f.name and f"(env {serve.env_name(f.name)}" in action.help


def test_flags_environment_and_precedence():
    env = {"LASTRANK_MAX_DOCUMENTS": "500", "LASTRANK_ALLOW_UNAUTHENTICATED": "1",
           "LASTRANK_MODEL": "a, b", "LASTRANK_REQUEST_TIMEOUT_S": "0"}
    s = parse([], env)
    assert (s.max_documents, s.allow_unauthenticated, s.model, s.request_timeout_s) == (500, True, ("a", "b"), None)
    s = parse(["--max-documents", "7", "--model", "x", "--model", "y", "--served-model-name", "X"], env)
    assert (s.max_documents, s.model, s.served_model_name) == (7, ("x", "y"), ("X",))  # the flag wins
    with pytest.raises(LastrankError, match="LASTRANK_MAX_DOCUMENTS"):
        parse([], {"LASTRANK_MAX_DOCUMENTS": "many"})
    with pytest.raises(LastrankError, match="LASTRANK_DTYPE must be one of"):
        parse([], {"LASTRANK_DTYPE": "int4"})


def test_aliases_belong_to_their_model():
    s = ServerSettings(model=("a", "b"), model_alias=("B=rerank-english-v3.0", "orphan"))
    assert s.aliases_for(1, "B") == ("rerank-english-v3.0",) and s.aliases_for(0, "A") == ()
    assert ServerSettings(model=("a",), model_alias=("x",)).aliases_for(0, "A") == ("x",)


def test_a_port_in_use_is_one_clear_line_before_anything_loads(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "lastrank", "serve", "--port", str(port),
                               "--model", str(tmp_path / "missing"), "--db", str(tmp_path / "x.db")],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"lastrank: error: port {port} on 127.0.0.1 is already in use "
                                   "(another lastrank serve?); stop that process or pass --port")
