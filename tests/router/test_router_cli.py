"""`lastrank serve --config`: a wrong config is one `lastrank: error:` line and a non-zero exit, before the server
starts (config.py's checks, unset key variables, and the preflight's score-rule check against an upstream)."""

from __future__ import annotations

import os
import subprocess
import sys

from fastapi import FastAPI
from support.live_server import AppServer

SECRET = "sk-do-not-echo-4242"


def serve(tmp_path, config: str, env: dict | None = None) -> subprocess.CompletedProcess:
    path = tmp_path / "router.toml"
    path.write_text(config)
    return subprocess.run([sys.executable, "-m", "lastrank", "serve", "--config", str(path), "--port", "0",
                           "--db", str(tmp_path / "r.db")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def one_error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lastrank: error: "), out.stderr
    return lines[0]


PROVIDER = """
[[models]]
name = "r"
[[models.providers]]
name = "up"
dialect = "lastrank"
base_url = "{url}"
api_key_env = "UP_KEY"
"""


def test_a_config_error_names_the_key(tmp_path):
    line = one_error_line(serve(tmp_path, PROVIDER.format(url="http://127.0.0.1:9") + f'api_key = "{SECRET}"\n'))
    assert "models[0].providers[0].api_key: unknown key" in line and SECRET not in line


def test_an_unset_key_variable_is_named(tmp_path):
    line = one_error_line(serve(tmp_path, PROVIDER.format(url="http://127.0.0.1:9"), env={"UP_KEY": ""}))
    assert "UP_KEY" in line and "not set or empty" in line


def test_a_provider_whose_score_rule_differs_from_the_config_is_refused_at_start(tmp_path):
    app = FastAPI()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{
            "id": "m", "aliases": [], "family": "bi-encoder", "architecture": "x", "listwise": False,
            "score": "cosine", "raw_score": "cosine", "instruction": False, "embedding_dim": 4,
            "context_length": 512, "max_doc_length": 256, "max_query_length": 64, "images": False}]}

    with AppServer(app) as upstream:
        config = PROVIDER.format(url=upstream.url) + 'score = "sigmoid"\n'
        line = one_error_line(serve(tmp_path, config, env={"UP_KEY": SECRET}))
        assert "score = 'sigmoid'" in line and "'cosine'" in line and SECRET not in line
        config = PROVIDER.format(url=upstream.url) + 'model = "other"\n'
        line = one_error_line(serve(tmp_path, config, env={"UP_KEY": SECRET}))
        assert "'m'" in line
