"""The log's backends and its writer thread: the I/O behind engine/store.py's interface.

- ``sqlite``: a SQLite file, the embedded default (one server per file, an flock held for its life);
- ``postgres``: PostgreSQL, shared by every server and host (leases keep them apart);
- ``memory``: the same log in dicts, for tests and benchmarks;
- ``writer``: the thread every write of a live server runs on, so the event loop never waits on a disk or
  a lock.

engine/ imports nothing from here: the core stays a pure function of its events; the composition root
(callstate/) picks a backend with ``open_store``.
"""

from __future__ import annotations

from engine.store import Store
from logstore.sqlite import SqliteStore


def is_postgres(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def open_store(db: str, *, readonly: bool = False, owner: str | None = None) -> Store:
    """The log at ``db``: a postgresql:// URL (logstore/postgres.py) or a SQLite file path."""
    if is_postgres(db):
        from logstore.postgres import PgStore  # psycopg only loads for a PostgreSQL log

        return PgStore(db, readonly=readonly, owner=owner)
    return SqliteStore(db, readonly=readonly, owner=owner)
