"""The log in a SQLite file, the embedded default (engine/store.py holds the interface and its rules)."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from engine.events import SCHEMA_VERSION
from engine.store import (
    _LAPSED,
    CallRow,
    End,
    Row,
    Store,
    StoreBusy,
    Stored,
    StoreError,
    _encode,
    select_calls,
)

# SQLITE_IOERR, SQLITE_LOCKED, SQLITE_BUSY, SQLITE_FULL (primary codes): worth another try
_TRANSIENT = {10, 6, 5, 13}
_SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"  # unix seconds by SQLite's clock

def sqlite_version(conn: sqlite3.Connection) -> int:
    """The version of a log's tables: PRAGMA user_version, or 1 for a log from before versioned migrations
    (the first version's tables, unnumbered)."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN "
                                     "('calls', 'events')").fetchone()[0]:
        return 1
    return version


#: The log's tables, version by version (PRAGMA user_version = how many have run). Never edit a shipped
#: entry: add one. The PostgreSQL log has the same versions (logstore/postgres.py).
SQLITE_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: calls and their events
        "CREATE TABLE IF NOT EXISTS calls (call_id TEXT PRIMARY KEY, started_at TEXT NOT NULL, flow TEXT NOT NULL, "
        "schema_version INTEGER NOT NULL, status TEXT NOT NULL, outcome TEXT, ended_t_ms INTEGER, turns INTEGER, "
        "last_seq INTEGER, meta TEXT NOT NULL) STRICT",
        "CREATE TABLE IF NOT EXISTS events (call_id TEXT, seq INTEGER, t_ms INTEGER NOT NULL, kind TEXT NOT NULL, "
        "type TEXT NOT NULL, data TEXT NOT NULL, cause INTEGER, PRIMARY KEY (call_id, seq)) STRICT",
        "CREATE INDEX IF NOT EXISTS idx_calls_started_at ON calls (started_at)",
    ),
    (  # 2: ownership by lease
        "ALTER TABLE calls ADD COLUMN owner TEXT",
        "CREATE TABLE instances (instance_id TEXT PRIMARY KEY, lease_until REAL NOT NULL) STRICT",
        "CREATE INDEX idx_calls_open ON calls (status) WHERE status = 'open'",
    ),
)


class SqliteStore(Store):
    """The embedded default: one SQLite file in WAL mode (readers never block the writer)."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False, owner: str | None = None) -> None:
        super().__init__(owner=owner)
        self.path = Path(path)
        if readonly and not self.path.is_file():
            raise StoreError(f"{self.path}: no such file")
        self._lock = threading.RLock()  # the connection is shared by the loop (reads) and the writer thread
        self._owner: int | None = None  # the fd holding <db>.lock while this store owns the log
        target = self.path.resolve().as_uri() + "?mode=ro" if readonly else str(self.path)
        try:
            conn = sqlite3.connect(target, uri=readonly, check_same_thread=False)
        except sqlite3.Error as exc:  # e.g. a directory that does not exist
            raise StoreError(f"{self.path}: cannot open ({exc})") from None
        try:
            self._db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
            if not readonly:
                self._create()
            if not {"calls", "events"} <= set(self._db.table_names()):
                raise StoreError(f"{self.path}: not a callstate log (no calls and events tables)")
            newest = self._db.execute("SELECT max(schema_version) FROM calls").fetchone()[0]
            if newest is not None and newest > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: written with schema version {newest}; "
                                 f"this engine supports version {SCHEMA_VERSION} and older")
        except sqlite3.Error as exc:
            conn.close()
            what = "not a SQLite database" if exc.sqlite_errorcode == sqlite3.SQLITE_NOTADB else "cannot open"
            raise StoreError(f"{self.path}: {what} ({exc})") from None
        except StoreError:
            conn.close()
            raise

    def _create(self) -> None:
        db = self._db
        db.enable_wal()  # readers (replay, stats) never block the live writer, nor it them
        # NORMAL in WAL: no fsync per commit, so a per-turn flush stays cheap; a process crash loses nothing
        # committed, a power loss may lose the last commits (https://sqlite.org/pragma.html#pragma_synchronous).
        db.execute("PRAGMA synchronous=NORMAL")
        version = sqlite_version(db.conn)
        if version > len(SQLITE_MIGRATIONS):
            raise StoreError(f"{self.path}: the log's tables are version {version}; this engine knows "
                             f"{len(SQLITE_MIGRATIONS)} and older (upgrade callstate)")
        for number, statements in enumerate(SQLITE_MIGRATIONS[version:], start=version + 1):
            with self._tx(f"upgrade to version {number}") as c:
                for sql in statements:
                    c.execute(sql)
                c.execute(f"PRAGMA user_version = {number}")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._lock:
                return self._db.execute(sql, params).fetchall()
        except RecursionError:
            raise StoreError(f"{self.path}: a value nests too deeply to read") from None
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None

    @contextmanager
    def _tx(self, what: str, conflict: Callable[[], str] | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction; a sqlite3 error becomes a StoreError naming the file and the operation.
        IMMEDIATE: the write lock is taken first, so a read inside the transaction (the open-call check)
        can never be invalidated by another writer (several workers may share one file). StoreBusy when trying
        again may work: locked by another process, disk full, I/O error."""
        conn = self._db.conn
        try:
            self._lock.acquire()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            raise StoreError(conflict() if conflict else f"{self.path}: {what}: {exc}") from None
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            transient = getattr(exc, "sqlite_errorcode", 0) & 0xFF in _TRANSIENT
            raise (StoreBusy if transient else StoreError)(f"{self.path}: {what}: {exc}") from None
        finally:
            self._lock.release()

    def claim(self, holder: str) -> None:
        lock_path = Path(f"{self.path}.lock")
        if self._owner is None:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise StoreError(f"{lock_path}: cannot open the log's lock file ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                other = os.pread(fd, 500, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise StoreError(f"{self.path} is in use by {other}; one live writer per log "
                                 "(stop it, or pass another --db)") from None
            self._owner = fd
        text = f"pid {os.getpid()}: {holder}".encode()
        os.ftruncate(self._owner, 0)
        os.pwrite(self._owner, text, 0)

    def _release(self) -> None:
        if self._owner is not None:
            os.close(self._owner)  # closing the fd drops the flock
            self._owner = None

    def _insert_call(self, call_id: str, started_at: str, flow: str, meta: dict[str, Any]) -> None:
        with self._tx("open_call", lambda: f"open_call({call_id!r}): already in {self.path}") as c:
            c.execute("INSERT INTO calls (call_id, started_at, flow, schema_version, status, meta, owner) "
                      "VALUES (?, ?, ?, ?, 'open', ?, ?)",
                      (call_id, started_at, flow, SCHEMA_VERSION, json.dumps(meta), self.owner))

    def _duplicate(self, rows: list[Row]) -> str:
        # Only another writer can cause this (append checks seqs): find the row it already wrote.
        for call_id, seq, *_ in rows:
            if self._query("SELECT 1 FROM events WHERE call_id = ? AND seq = ?", (call_id, seq)):
                return f"call {call_id!r} seq {seq}: already in {self.path}; the log is append-only, " \
                       "nothing was written"
        return f"{self.path}: flush: constraint failed; nothing was written"

    def _write(self, rows: list[Row], end: End | None) -> set[str]:
        with self._tx("flush", lambda: self._duplicate(rows)) as c:
            ids = sorted({row[0] for row in rows})
            marks = ", ".join("?" * len(ids))
            still_open = {r[0] for r in c.execute(f"SELECT call_id FROM calls WHERE status = 'open' "
                                                  f"AND call_id IN ({marks})", ids)}
            if len(still_open) < len(ids):
                rows = [row for row in rows if row[0] in still_open]
            c.executemany("INSERT INTO events (call_id, seq, t_ms, kind, type, data, cause) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            if end is not None:
                call_id, outcome, ended_t_ms, turns, last_seq, extra = end
                cur = c.execute("UPDATE calls SET status = 'ended', outcome = ?, ended_t_ms = ?, turns = ?, "
                                "last_seq = ? WHERE call_id = ? AND status = 'open'",
                                (outcome, ended_t_ms, turns, last_seq, call_id))
                if extra and cur.rowcount == 1:
                    (meta,) = c.execute("SELECT meta FROM calls WHERE call_id = ?", (call_id,)).fetchone()
                    merged = {**(json.loads(meta) if meta else {}), **extra}
                    c.execute("UPDATE calls SET meta = ? WHERE call_id = ?", (_encode(merged), call_id))
                if cur.rowcount != 1:  # raising inside the transaction rolls the batch back too
                    raise StoreError(f"close_call({call_id!r}): the call is not open in {self.path}")
        return set(ids) - still_open

    def _read(self, call_id: str) -> Stored:
        # calls before events: close_call commits the last events and last_seq together, so reading in
        # this order can never see a last_seq without its events (a false "truncated").
        found = self._query("SELECT schema_version, last_seq FROM calls WHERE call_id = ?", (call_id,))
        if not found:
            raise StoreError(f"no call {call_id!r} in DB")
        rows = self._query("SELECT seq, t_ms, kind, type, data, cause FROM events WHERE call_id = ? "
                           "ORDER BY seq", (call_id,))
        return found[0][0], found[0][1], rows

    def _renew(self, lease_s: float) -> None:
        with self._tx("renew lease") as c:
            c.execute(f"INSERT INTO instances (instance_id, lease_until) VALUES (?, {_SQLITE_NOW} + ?) "
                      "ON CONFLICT (instance_id) DO UPDATE SET lease_until = excluded.lease_until",
                      (self.owner, lease_s))

    def release_lease(self) -> None:
        with self._tx("release lease") as c:
            c.execute("DELETE FROM instances WHERE instance_id = ?", (self.owner,))

    def mark_abandoned(self) -> list[str]:
        # last_seq and ended_t_ms come from what was flushed before the crash: load() then checks that
        # prefix, and list_calls shows how long the call ran. BEGIN IMMEDIATE: no flush interleaves.
        with self._tx("mark_abandoned") as c:
            rows = c.execute(
                "UPDATE calls SET status = 'abandoned', outcome = 'abandoned', last_seq = "
                "(SELECT coalesce(max(seq), 0) FROM events e WHERE e.call_id = calls.call_id), "
                "ended_t_ms = (SELECT max(t_ms) FROM events e WHERE e.call_id = calls.call_id) "
                f"WHERE {_LAPSED.format(now=_SQLITE_NOW, me='?')} RETURNING call_id, started_at",
                (self.owner,)).fetchall()
        return [call_id for call_id, _ in sorted(rows, key=lambda r: (r[1], r[0]))]

    def call_sids(self) -> list[tuple[str, str]]:
        self.drain()
        rows = self._query("SELECT call_id, CASE WHEN json_valid(meta) THEN json_extract(meta, '$.call_sid') END "
                           "FROM calls ORDER BY started_at, call_id")
        return [(call_id, sid if isinstance(sid, str) else "") for call_id, sid in rows]

    def _list_calls(self, since: str | None) -> list[CallRow]:
        return select_calls(self._query, "?", since)

    def close(self, timeout: float = 30.0) -> None:
        try:
            super().close(timeout)
        finally:
            with self._lock:
                self._db.close()
            self._release()
