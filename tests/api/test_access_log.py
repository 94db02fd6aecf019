"""--access-log json: one line per request with who, which model, what it cost; never a key or a text."""

from __future__ import annotations

import json
import logging

from lastrank.api.settings import ServerSettings


def test_access_log_is_one_json_line_without_secrets(store, fake_scheduler, caplog):
    from fastapi.testclient import TestClient

    from lastrank.api.app import create_app
    from lastrank.api.logs import access_log
    _, plaintext = store.create_key("alice")
    access_log.setLevel(logging.INFO)
    with TestClient(create_app(ServerSettings(model=("/ckpt/tiny",)), store, scheduler=fake_scheduler)) as c, \
            caplog.at_level(logging.INFO, logger="lastrank.access"):
        r = c.post("/v1/rerank", headers={"Authorization": f"Bearer {plaintext}"},
                   json={"query": "secret query", "documents": ["secret doc one", "two"]})
    assert r.status_code == 200
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "lastrank.access"]
    line = next(x for x in lines if x["path"] == "/v1/rerank")
    assert line["key"] == "alice" and line["model"] == "jina-reranker-v3" and line["status"] == 200
    assert line["documents"] == 2 and line["tokens"] > 0 and line["request_id"] == r.headers["x-request-id"]
    text = " ".join(rec.getMessage() for rec in caplog.records)
    assert "secret" not in text and plaintext not in text
