"""Refused requests are counted per key (never billed) for `lastrank usage`'s ERRORS column (fake scheduler,
real SQLite store; the store's own tests run the counters on PostgreSQL too)."""

from __future__ import annotations

import logging

from lastrank.api.refusals import count_refusal

BODY = {"query": "q words", "documents": ["q words here", "nothing"]}


def _counts(store) -> dict[tuple, int]:
    store.flush_refusals()
    return {(r["key_id"], r["route"], r["status"]): r["count"] for r in store.list_refusals()}


def test_refusals_are_counted_per_key(make_client, store):
    client = make_client()
    key, plaintext = store.create_key("alice", requests_per_minute=1)
    revoked, old = store.create_key("bob")
    store.revoke_key("bob")
    auth = {"Authorization": f"Bearer {plaintext}"}

    assert client.post("/v1/rerank", json=BODY, headers=auth).status_code == 200
    assert client.post("/v1/rerank", json=BODY, headers=auth).status_code == 429
    assert client.post("/v2/rerank", json=BODY).status_code == 401
    assert client.post("/v2/rerank", json=BODY, headers={"Authorization": f"Bearer {plaintext[:-1]}x"}).status_code == 401
    assert client.post("/rerank", json=BODY, headers={"Authorization": f"Bearer {old}"}).status_code == 403
    assert client.get("/health").status_code == 200  # not a rerank route: never counted
    assert client.get("/no-such-page").status_code == 404

    assert _counts(store) == {
        (key.id, "/v1/rerank", 429): 1,
        (None, "/v2/rerank", 401): 2,  # no valid key: "(no key)", even when the id part was a real key's
        (revoked.id, "/rerank", 403): 1,
    }
    assert store.count_usage() == 1  # only the 200 is billed
    rows = {r["key_name"] or "(no key)": r for r in store.usage_summary()}
    assert (rows["alice"]["requests"], rows["alice"]["errors"]) == (2, 1)
    assert (rows["(no key)"]["requests"], rows["(no key)"]["errors"]) == (2, 2)
    assert (rows["bob"]["requests"], rows["bob"]["errors"]) == (1, 1)


def test_bad_input_after_authentication_is_the_keys(make_client, store):
    client = make_client()
    key, plaintext = store.create_key("alice")
    auth = {"Authorization": f"Bearer {plaintext}"}
    assert client.post("/v1/rerank", content=b"{not json", headers={**auth, "Content-Type": "application/json"}
                       ).status_code == 400
    assert client.post("/v1/rerank", json={"query": "q"}, headers=auth).status_code == 422
    assert client.post("/v1/rerank", json={**BODY, "model": "no-such-model"}, headers=auth).status_code == 404
    assert _counts(store) == {(key.id, "/v1/rerank", 400): 1, (key.id, "/v1/rerank", 422): 1,
                              (key.id, "/v1/rerank", 404): 1}


def test_counting_never_fails_a_response(make_client, store, caplog):
    client = make_client()
    _, plaintext = store.create_key("alice", requests_per_minute=1)

    def broken(*args, **kwargs):
        raise RuntimeError("the store is on fire")

    store.record_refusal = broken
    auth = {"Authorization": f"Bearer {plaintext}"}
    assert client.post("/v1/rerank", json=BODY, headers=auth).status_code == 200
    with caplog.at_level(logging.ERROR, logger="lastrank.api"):
        r = client.post("/v1/rerank", json=BODY, headers=auth)
    assert r.status_code == 429 and r.json()["error"]["code"] == 429
    assert "could not count a refused request" in caplog.text


def test_count_refusal_ignores_what_it_should():
    count_refusal({"path": "/v1/rerank"}, 200)  # no app at all: nothing to do, nothing raised
    count_refusal({"path": "/v1/rerank"}, 499)
    count_refusal({}, 500)
