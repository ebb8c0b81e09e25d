"""Versioned migrations of the log's tables (`engine db upgrade`), from an empty database and from the
previous version, on SQLite and PostgreSQL; and PostgreSQL URLs never leak their password."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from callstate.cli import main
from engine.store import StoreError
from logstore import open_store
from logstore.postgres import MIGRATIONS, PgStore, upgrade
from logstore.sqlite import SQLITE_MIGRATIONS, SqliteStore
from tests.test_store import EVENTS, T0, write_call

V1_ROWS = [  # what a version-1 writer left: one ended call, one open call with no owner column at all
    ("ended", T0, "demo", 1, "ended", "hangup", 40, 1, 1, '{"from": "+1"}'),
    ("cut", T0, "demo", 1, "open", None, None, None, None, "{}"),
]
V1_EVENT = ("cut", 1, 0, "input", "CallStarted", '{"call_sid":"CA1","params":{},"seed":7,"stream_sid":""}', None)
V1_END_EVENT = ("ended", 1, 0, "input", "CallStarted", '{"call_sid":"CA2","params":{},"seed":7,"stream_sid":""}',
                None)


def test_both_stores_know_the_same_versions() -> None:
    assert len(SQLITE_MIGRATIONS) == len(MIGRATIONS) == 2


def test_postgres_from_empty_to_latest_then_nothing_to_do(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "version", "--db", pg_url]) == 0
    assert "tables at version 0 (this engine: 2)" in capsys.readouterr().out
    assert main(["db", "upgrade", "--db", pg_url]) == 0
    assert "upgraded the tables from version 0 to 2" in capsys.readouterr().out
    assert main(["db", "upgrade", "--db", pg_url]) == 0
    assert "already at version 2; nothing to do" in capsys.readouterr().out
    with PgStore(pg_url) as store:
        write_call(store)
        assert store.load("c1") == EVENTS


def test_postgres_from_version_1_keeps_every_row(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert upgrade(pg_url, to=1) == (0, 1)
    with psycopg.connect(pg_url) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO calls VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", V1_ROWS)
        cur.executemany("INSERT INTO events VALUES (%s, %s, %s, %s, %s, %s, %s)", [V1_EVENT, V1_END_EVENT])
    with pytest.raises(StoreError, match=r"version 1, this engine writes version 2: run `engine db upgrade"):
        PgStore(pg_url)  # a writer never upgrades a shared database behind its operators' backs
    with PgStore(pg_url, readonly=True) as reader:  # readers read the old tables as they are
        assert [c.call_id for c in reader.list_calls()] == ["cut", "ended"]
    assert main(["db", "upgrade", "--db", pg_url]) == 0
    assert "from version 1 to 2" in capsys.readouterr().out
    with PgStore(pg_url) as store:
        assert [(c.call_id, c.status, c.meta) for c in store.list_calls()] == [
            ("cut", "open", {}), ("ended", "ended", {"from": "+1"})]
        assert store.mark_abandoned() == ["cut"]  # no owner: a writer from before leases, gone
        assert len(store.load("cut")) == 1


def _v1_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    with conn:
        for sql in SQLITE_MIGRATIONS[0]:
            conn.execute(sql)
        conn.executemany("INSERT INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", V1_ROWS)
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", [V1_EVENT, V1_END_EVENT])
    conn.close()


def test_sqlite_from_version_1_keeps_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "old.db"
    _v1_sqlite(db)  # user_version 0 with tables: a log written before versioned migrations
    with SqliteStore(db, readonly=True) as reader:
        assert [c.call_id for c in reader.list_calls()] == ["cut", "ended"]
    assert main(["db", "version", "--db", str(db)]) == 0
    assert "tables at version 1 (this engine: 2)" in capsys.readouterr().out
    assert main(["db", "upgrade", "--db", str(db)]) == 0
    assert "from version 1 to 2" in capsys.readouterr().out
    with SqliteStore(db) as store:
        assert [(c.call_id, c.status) for c in store.list_calls()] == [("cut", "open"), ("ended", "ended")]
        assert store.mark_abandoned() == ["cut"]
        write_call(store)


def test_sqlite_from_empty_runs_every_migration(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    SqliteStore(db).close()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone() == (2,)
    assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {
        "calls", "events", "instances"}
    conn.close()


def test_a_newer_database_is_refused_naming_both_versions(pg_url: str, tmp_path: Path) -> None:
    upgrade(pg_url)
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO callstate_migrations (version) VALUES (3)")
    with pytest.raises(StoreError, match=r"tables are version 3; this engine knows 2 and older"):
        open_store(pg_url)
    db = tmp_path / "newer.db"
    SqliteStore(db).close()
    sqlite3.connect(db).execute("PRAGMA user_version = 3")
    with pytest.raises(StoreError, match=r"tables are version 3; this engine knows 2 and older"):
        SqliteStore(db)


def test_a_url_s_password_never_reaches_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://alice:hunter2@127.0.0.1:1/nope"  # port 1: refused at once
    for argv in (["calls", "--db", url], ["check", "--db", url], ["db", "upgrade", "--db", url],
                 ["replay", "c1", "--db", url]):
        assert main(argv) == 1
        out = capsys.readouterr()
        assert "hunter2" not in out.out + out.err
        assert "postgresql://alice@127.0.0.1:1/nope" in out.err
        assert "Traceback" not in out.err


def test_an_unparsable_url_s_password_never_reaches_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://alice:p%zzhunter2@127.0.0.1:1/nope"  # a bad percent escape: the driver quotes it
    for argv in (["calls", "--db", url], ["db", "upgrade", "--db", url], ["db", "version", "--db", url]):
        assert main(argv) == 1
        out = capsys.readouterr()
        assert "hunter2" not in out.out + out.err
        assert "not a valid postgresql:// URL" in out.err and "Traceback" not in out.err


def test_a_missing_postgres_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.conftest as conftest

    monkeypatch.setattr(conftest, "PG_URL", "postgresql://postgres@127.0.0.1:1/test")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no PostgreSQL at"):
        conftest.need_postgres()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL tests must run in CI"):
        conftest.need_postgres()
