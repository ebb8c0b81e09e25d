"""Shared fixtures. PostgreSQL tests run against a real server: they skip with a reason where none is
reachable, and FAIL instead when CI is set (CI has the server up; a silent skip there would hide a break)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from engine.store import Store
from logstore import open_store
from logstore.memory import MemoryStore
from logstore.sqlite import SqliteStore

#: The server the PostgreSQL tests use (trust auth on this project's machines).
PG_URL = os.environ.get("CALLSTATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_unreachable() -> str | None:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - a dependency
        return f"psycopg is not installed ({exc})"
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL at {PG_URL} ({str(exc).strip().splitlines()[0]})"
    return None


def need_postgres() -> None:
    """Skip (fail in CI) unless the test server answers."""
    reason = _pg_unreachable()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: PostgreSQL tests must run in CI (start it: pg_ctlcluster ... main start)",
                    pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL to a fresh, empty schema of the test database (dropped afterwards): tests never share tables."""
    need_postgres()
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "calls.db"


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def store(request: pytest.FixtureRequest, db_path: Path) -> Iterator[Store]:
    """One conformance suite, every backend: the same test runs against SQLite, PostgreSQL and memory."""
    if request.param == "postgresql":
        s: Store = open_store(request.getfixturevalue("pg_url"))
    else:
        s = SqliteStore(db_path) if request.param == "sqlite" else MemoryStore()
    yield s
    s.close()
