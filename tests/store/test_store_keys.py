"""API keys: create, verify, list, revoke; only a hash at rest. Each test runs on SQLite and PostgreSQL
(the `store` and `target` fixtures in conftest.py)."""

from __future__ import annotations

import re
import threading
from datetime import timezone

import pytest

from lastrank.errors import InvalidRequestError, NotFoundError
from lastrank.store import KeyRecord, Store, open_store
from support.threads import in_threads


def test_create_and_verify(store):
    assert not store.has_active_keys()
    record, plaintext = store.create_key("acme", requests_per_minute=60, documents_per_minute=5000)
    assert isinstance(record, KeyRecord)
    assert re.fullmatch(r"lr-[0-9a-f]{12}-[A-Za-z0-9_-]{43}", plaintext)
    assert plaintext.startswith(record.prefix + "-")
    assert record.prefix == f"lr-{record.id}"
    assert record.name == "acme" and record.active and record.revoked_at is None
    assert (record.requests_per_minute, record.documents_per_minute) == (60, 5000)
    assert record.created_at.tzinfo == timezone.utc
    assert store.has_active_keys()
    assert store.verify_key(plaintext) == record
    # surrounding whitespace from a header is tolerated
    assert store.verify_key(f"  {plaintext}\n") == record


def test_two_keys_are_distinct(store):
    a, pa = store.create_key("a")
    b, pb = store.create_key("b")
    assert a.id != b.id and pa != pb
    assert store.verify_key(pa).name == "a"
    assert store.verify_key(pb).name == "b"
    assert [k.name for k in store.list_keys()] == ["a", "b"]
    assert (a.requests_per_minute, a.documents_per_minute) == (None, None)


def test_secret_is_not_stored_sqlite(tmp_path):
    path = tmp_path / "keys.db"
    store = Store(path)
    _, plaintext = store.create_key("needle-name")
    secret = plaintext.split("-", 2)[2]  # the secret itself may contain "-"
    store.close()
    files = [p for p in tmp_path.iterdir() if p.name.startswith("keys.db")]
    data = b"".join(p.read_bytes() for p in files)
    assert b"needle-name" in data  # the search itself works: the row is somewhere in these files
    assert secret.encode() not in data
    assert plaintext.encode() not in data
    # a fresh store (another process in real life) still verifies from the hash alone
    with Store(path) as again:
        assert again.verify_key(plaintext).name == "needle-name"


def test_secret_is_not_stored(store, target):
    """What the database holds, every column of every table as text: the name, never the key."""
    _, plaintext = store.create_key("needle-name")
    secret = plaintext.split("-", 2)[2]
    with store._read() as conn:
        tables = ["api_keys", "usage", "refusals", "rate_buckets"]
        dump = repr([conn.execute(f"SELECT * FROM {t}").fetchall() for t in tables])
    assert "needle-name" in dump
    assert secret not in dump and secret.encode().hex() not in dump
    store.close()
    with open_store(target) as again:  # another process in real life: verifies from the hash alone
        assert again.verify_key(plaintext).name == "needle-name"


def test_concurrent_creates_of_one_name_make_one_key(target):
    """Two clients (two replicas) racing to create the same name: one key, one clear refusal."""
    stores = [open_store(target) for _ in range(2)]
    outcomes: list[object] = []

    def create(i: int):
        try:
            outcomes.append(stores[i % 2].create_key("same-name"))
        except InvalidRequestError as e:
            outcomes.append(e)

    in_threads(8, create, together=True)
    try:
        made = [o for o in outcomes if isinstance(o, tuple)]
        refused = [o for o in outcomes if isinstance(o, InvalidRequestError)]
        assert len(made) == 1 and len(refused) == 7, outcomes
        assert all("already exists" in str(e) for e in refused)
        assert [k.name for k in stores[1].list_keys()] == ["same-name"]
    finally:
        for s in stores:
            s.close()


def test_wrong_unknown_and_malformed_keys(store):
    record, plaintext = store.create_key("acme")
    secret = plaintext.split("-", 2)[2]
    other_secret = ("A" if secret[0] != "A" else "B") + secret[1:]
    assert store.verify_key(f"lr-{record.id}-{other_secret}") is None  # right id, wrong secret
    assert store.verify_key(f"lr-{'0' * 12 if record.id != '0' * 12 else '1' * 12}-{secret}") is None  # unknown id
    for bad in [
        "",
        "lr-",
        plaintext[:-1],  # secret too short
        plaintext + "x",  # too long
        plaintext.upper(),
        plaintext.replace("lr-", "sk-", 1),
        f"Bearer {plaintext}",
        plaintext.replace("-", "_"),
        record.id,
        record.prefix,
        "lr-" + record.id + "-" + "é" * 43,
        None,
        plaintext.encode(),
        123,
    ]:
        assert store.verify_key(bad) is None, bad


def test_revoke_by_name_id_and_prefix(store):
    a, pa = store.create_key("a")
    b, pb = store.create_key("b")
    c, pc = store.create_key("c")
    ra = store.revoke_key("a")
    assert ra.id == a.id and not ra.active and ra.revoked_at >= ra.created_at
    assert store.verify_key(pa) is None
    assert store.revoke_key(b.id).id == b.id
    assert store.revoke_key(c.prefix).id == c.id
    assert all(store.verify_key(p) is None for p in (pa, pb, pc))
    assert not store.has_active_keys()
    assert [k.active for k in store.list_keys()] == [False, False, False]
    assert store.list_keys(include_revoked=False) == []
    # revoking again by id changes nothing; by name there is no active key left
    again = store.revoke_key(a.id)
    assert again.revoked_at == ra.revoked_at
    with pytest.raises(NotFoundError):
        store.revoke_key("a")


def test_revoke_unknown(store):
    store.create_key("a")
    for ident in ["nobody", "0123456789ab", "lr-0123456789ab"]:
        with pytest.raises(NotFoundError):
            store.revoke_key(ident)
    assert store.has_active_keys()


def test_names_unique_among_active_keys(store):
    old, p_old = store.create_key("acme")
    with pytest.raises(InvalidRequestError, match="already exists"):
        store.create_key("acme")
    with pytest.raises(InvalidRequestError):
        store.create_key("  acme ")  # names are stripped
    store.revoke_key("acme")
    new, p_new = store.create_key("acme")
    assert new.id != old.id
    assert store.verify_key(p_new) == new and store.verify_key(p_old) is None
    assert store.get_key("acme") == new  # the name means the active key
    assert store.get_key(old.id).id == old.id


@pytest.mark.parametrize(
    "name", ["", "   ", "x" * 65, "a\nb", "tab\there", "0123456789ab", "lr-0123456789ab", "lr-anything", None, 5]
)
def test_bad_names(store, name):
    with pytest.raises(InvalidRequestError):
        store.create_key(name)
    assert store.list_keys() == []


@pytest.mark.parametrize("field", ["requests_per_minute", "documents_per_minute"])
@pytest.mark.parametrize("value", [0, -1, 1.5, "10", True])
def test_bad_limits(store, field, value):
    with pytest.raises(InvalidRequestError, match=field):
        store.create_key("k", **{field: value})
    assert store.list_keys() == []


def test_to_dict_has_no_secret(store):
    record, plaintext = store.create_key("acme", requests_per_minute=3)
    d = record.to_dict()
    assert d["id"] == record.id and d["active"] is True and d["requests_per_minute"] == 3
    assert plaintext.split("-", 2)[2] not in repr(d) + repr(record)


def test_verify_from_many_threads(store):
    keys = [store.create_key(f"k{i}") for i in range(4)]
    results: list[tuple[str, str | None]] = []
    lock = threading.Lock()

    def worker(i: int):
        for n in range(50):
            record, plaintext = keys[(i + n) % len(keys)]
            got = store.verify_key(plaintext)
            bad = store.verify_key(plaintext[:-2] + "zz" if not plaintext.endswith("zz") else plaintext[:-2] + "yy")
            with lock:
                results.append((record.id, got.id if got else None))
                results.append(("bad", bad))

    in_threads(8, worker)
    assert len(results) == 8 * 50 * 2
    assert all(want == got if want != "bad" else got is None for want, got in results)


def test_a_key_may_be_limited_to_some_models(store):
    record, plaintext = store.create_key("team-a", models=["minilm", "jina-reranker-v3", "minilm"])
    assert record.models == ("minilm", "jina-reranker-v3")  # order kept, duplicates dropped
    assert store.verify_key(plaintext).models == ("minilm", "jina-reranker-v3")
    everything, plaintext = store.create_key("team-b")
    assert everything.models is None and store.verify_key(plaintext).models is None
    assert store.list_keys()[0].to_dict()["models"] == ["minilm", "jina-reranker-v3"]
    for bad in ([], ["a,b"], [" "]):
        with pytest.raises(InvalidRequestError, match="models must be served model names"):
            store.create_key(f"bad-{len(bad)}", models=bad)
