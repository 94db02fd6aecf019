"""While the server drains (SIGTERM: api/lifecycle.drain_models), /ready and a request that still arrives on an open
connection say the server is shutting down, not that the model is loading (what an operator reading them would act on)."""

from __future__ import annotations

import time


def test_a_draining_server_says_it_is_stopping_not_loading(make_client):
    from lastrank.api.lifecycle import drain_models

    c = make_client()
    state = c.app.state.lastrank
    assert c.get("/ready").status_code == 200
    c.portal.call(drain_models, state.models, time.monotonic() + 1.0)
    ready = c.get("/ready")
    assert ready.status_code == 503 and "shutting down" in ready.json()["detail"]
    r = c.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
    assert r.status_code == 503 and "shutting down" in r.json()["detail"] and "loading" not in r.json()["detail"]
