"""`lastrank keys ...` and `lastrank usage` through the real CLI entry point, on a SQLite file (--db) and
on a real PostgreSQL database (--store postgresql://..., tests/support/postgres_server.py)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest

from support import postgres_server
from lastrank.cli import main
from lastrank.store import Store, UsageRow, cost_for, open_store

KEY_RE = re.compile(r"lr-[0-9a-f]{12}-[A-Za-z0-9_-]{43}")


@dataclass
class Where:
    target: str  # what open_store takes
    args: list[str]  # how the CLI is told


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path, monkeypatch) -> Where:
    monkeypatch.delenv("LASTRANK_DB", raising=False)
    monkeypatch.delenv("LASTRANK_STORE", raising=False)
    if request.param == "sqlite":
        path = str(tmp_path / "cli.db")
        yield Where(path, ["--db", path])
        return
    with postgres_server.database() as url:
        yield Where(url, ["--store", url])


def _create(capsys, db, *extra) -> str:
    assert main(["keys", "create", *db.args, *extra]) == 0
    out, err = capsys.readouterr()
    assert KEY_RE.fullmatch(out.strip()), out  # stdout holds the key and nothing else
    assert "will not be shown again" in err
    return out.strip()


def test_create_prints_a_working_key_once(capsys, db):
    plaintext = _create(capsys, db, "--name", "acme", "--requests-per-minute", "60", "--documents-per-minute", "9000")
    secret = plaintext.split("-", 2)[2]
    with open_store(db.target) as store:
        record = store.verify_key(plaintext)
    assert record.name == "acme" and (record.requests_per_minute, record.documents_per_minute) == (60, 9000)

    assert main(["keys", "list", *db.args]) == 0
    out, err = capsys.readouterr()
    assert "acme" in out and record.id in out and "active" in out and "9000" in out
    assert secret not in out + err

    assert main(["keys", "list", *db.args, "--json"]) == 0
    out, _ = capsys.readouterr()
    listed = json.loads(out)
    assert [(k["id"], k["name"], k["active"], k["requests_per_minute"]) for k in listed] == [
        (record.id, "acme", True, 60)
    ]
    assert secret not in out


def test_list_empty(capsys, db):
    assert main(["keys", "list", *db.args]) == 0
    assert "No keys" in capsys.readouterr().out
    assert main(["keys", "list", *db.args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_revoke(capsys, db):
    plaintext = _create(capsys, db, "--name", "acme")
    assert main(["keys", "revoke", "acme", *db.args]) == 0
    assert "Revoked key 'acme'" in capsys.readouterr().out
    with open_store(db.target) as store:
        assert store.verify_key(plaintext) is None
        key_id = store.list_keys()[0].id
    assert main(["keys", "revoke", key_id, *db.args]) == 0
    assert "already revoked" in capsys.readouterr().out
    assert main(["keys", "list", *db.args]) == 0
    assert "revoked" in capsys.readouterr().out


def test_errors_are_reported(capsys, db):
    _create(capsys, db, "--name", "acme")
    assert main(["keys", "create", "--name", "acme", *db.args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "already exists" in err
    assert main(["keys", "revoke", "nobody", *db.args]) == 2
    assert "nobody" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["keys", "create", "--name", "x", "--requests-per-minute", "0", *db.args])
    assert exc.value.code == 2
    assert "at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["keys", "create", *db.args])  # --name is required
    capsys.readouterr()
    with open_store(db.target) as store:
        assert [k.name for k in store.list_keys()] == ["acme"]


def test_an_unreachable_postgresql_store_is_one_line_without_the_password():
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "lastrank", "usage", "--store",
                           f"postgresql://u:pw-s3cret@127.0.0.1:{port}/db"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("lastrank: error: cannot use the PostgreSQL store "
                                                                    f"postgresql://u:***@127.0.0.1:{port}/db"), done.stderr
    assert "s3cret" not in done.stderr


def test_db_from_environment(capsys, tmp_path, monkeypatch):
    path = tmp_path / "env" / "from-env.db"
    monkeypatch.setenv("LASTRANK_DB", str(path))
    assert main(["keys", "create", "--name", "a"]) == 0
    plaintext = capsys.readouterr().out.strip()
    with Store(path) as store:
        assert store.verify_key(plaintext).name == "a"
    # --db wins over the environment
    other = tmp_path / "other.db"
    assert main(["keys", "list", "--db", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def _seed_usage(db) -> tuple[str, str]:
    with open_store(db.target) as store:
        a, _ = store.create_key("alpha")
        b, _ = store.create_key("beta")
        day1 = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)
        day2 = datetime(2026, 11, 21, 12, tzinfo=timezone.utc)
        for i, (key, docs, when, status) in enumerate(
            [(a, 10, day1, 200), (a, 30, day1, 200), (b, 1000, day2, 200), (None, 5, day2, 200), (a, 2, day2, 503)]
        ):
            store.record_usage(
                UsageRow(f"r{i}", key.id if key else None, "m", "/v1/rerank", "jina", docs, docs * 50, 1, status,
                         3.0, cost_for(docs) if status == 200 else 0.0, created_at=when)
            )
        # refused requests, as the server counts them (never billed)
        store.record_refusals({
            ("2026-11-21", a.id, "/v1/rerank", 429, "m"): 2,
            ("2026-11-21", "", "/v1/rerank", 401, "m"): 3,
            ("2026-11-20", b.id, "/v2/rerank", 403, "m"): 1,
        })
    return a.id, b.id


def test_usage_table(capsys, db):
    a_id, b_id = _seed_usage(db)
    assert main(["usage", *db.args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["DAY", "(UTC)", "KEY"]
    assert lines[-1].startswith("ERRORS: requests refused or failed")
    body = [line.split() for line in lines[1:-1]]
    assert len(body) == 6
    assert ["2026-11-20", a_id, "alpha", "2", "0", "40", "2000", "0.000320"] in body[:2]
    assert ["2026-11-20", b_id, "beta", "1", "1", "0", "0", "0.000000"] in body[:2]  # refused only
    assert body[2] == ["2026-11-21", "(no", "key)", "-", "4", "3", "5", "250", "0.000040"]  # 3 x 401
    assert ["2026-11-21", b_id, "beta", "1", "0", "1000", "50000", "0.008000"] in body
    assert ["2026-11-21", a_id, "alpha", "3", "3", "2", "100", "0.000000"] in body  # a 503 row and 2 x 429
    assert body[-1] == ["TOTAL", "11", "7", "1047", "52350", "0.008360"]


def test_usage_json_and_filters(capsys, db):
    a_id, _ = _seed_usage(db)
    assert main(["usage", *db.args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["rows"]) == 5
    assert data["total"] == {
        "requests": 11, "errors": 7, "documents": 1047, "prompt_tokens": 52350, "blocks": 5, "cost_usd": 0.00836
    }

    assert main(["usage", *db.args, "--json", "--key", "alpha"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(r["day"], r["documents"]) for r in data["rows"]] == [("2026-11-20", 40), ("2026-11-21", 2)]
    assert all(r["key_id"] == a_id for r in data["rows"])

    assert main(["usage", *db.args, "--json", "--since", "2026-11-21"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {r["day"] for r in data["rows"]} == {"2026-11-21"} and data["total"]["documents"] == 1007

    assert main(["usage", *db.args, "--since", "2026-12-01"]) == 0
    assert "No usage recorded since 2026-12-01" in capsys.readouterr().out


def test_usage_errors(capsys, db):
    _seed_usage(db)
    assert main(["usage", *db.args, "--since", "21/11/2026"]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err
    assert main(["usage", *db.args, "--key", "nobody"]) == 2
    assert "nobody" in capsys.readouterr().err


def test_usage_lists_refusals(capsys, db):
    a_id, b_id = _seed_usage(db)
    assert main(["usage", *db.args, "--errors"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["DAY", "(UTC)", "KEY", "NAME", "ROUTE", "STATUS", "MODEL", "COUNT"]
    assert [line.split() for line in lines[1:]] == [
        ["2026-11-20", b_id, "beta", "/v2/rerank", "403", "m", "1"],
        ["2026-11-21", "(no", "key)", "-", "/v1/rerank", "401", "m", "3"],
        ["2026-11-21", a_id, "alpha", "/v1/rerank", "429", "m", "2"],
    ]
    assert main(["usage", *db.args, "--errors", "--json", "--key", "alpha"]) == 0
    assert json.loads(capsys.readouterr().out) == {"refusals": [
        {"day": "2026-11-21", "key_id": a_id, "route": "/v1/rerank", "status": 429, "model": "m", "count": 2}]}
    assert main(["usage", *db.args, "--errors", "--since", "2026-12-01"]) == 0
    assert "No refused requests recorded since 2026-12-01" in capsys.readouterr().out


def test_store_from_environment(capsys, db, monkeypatch):
    """$LASTRANK_STORE names the store (a URL or a path) and wins over $LASTRANK_DB."""
    monkeypatch.setenv("LASTRANK_STORE", db.target)
    monkeypatch.setenv("LASTRANK_DB", "/nonexistent/never-used.db")
    assert main(["keys", "create", "--name", "from-env"]) == 0
    plaintext = capsys.readouterr().out.strip()
    with open_store(db.target) as store:
        assert store.verify_key(plaintext).name == "from-env"


def test_store_and_db_are_exclusive(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["keys", "list", "--db", str(tmp_path / "a.db"), "--store", str(tmp_path / "b.db")])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err
