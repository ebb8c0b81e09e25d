"""The call log in PostgreSQL, for several processes and hosts: the Store interface of engine/store.py.

Same guarantees as SQLite (append-only rows, seqs checked on append and load, schema version per call, a
flush is one transaction), plus what sharing needs:
- Driver: psycopg 3 with psycopg_pool (bench/pg_driver.py: a 20-row flush costs the same as asyncpg's,
  and its blocking API fits the Store's, called off the event loop by the runtime's writer).
- Versioned migrations (``MIGRATIONS``, table ``callstate_migrations``), applied by ``engine db upgrade``
  under an advisory lock; a writer on an empty database applies them itself, and refuses an older schema
  with the command to run, never upgrading a shared database behind its operators' backs.
- A flush locks the rows of the calls it writes (FOR NO KEY UPDATE) and writes only those still open; the
  abandon sweep skips locked rows (SKIP LOCKED), so a sweep and a flush never interleave and an abandoned
  call's last_seq is exactly what was flushed.
- Every append commits a NOTIFY on channel ``callstate_events`` with the call id and its last seq, so a
  listener on any host learns of new events without polling (``listen``).
- The URL's password never reaches an error message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from engine.events import SCHEMA_VERSION
from engine.store import _LAPSED, CallRow, End, Row, Store, StoreBusy, Stored, StoreError, select_calls

CHANNEL = "callstate_events"
COPY_FROM = 32  # rows in a flush from which COPY beats executemany (bench/log_store.py, batches 10 vs 100)
_PG_NOW = "extract(epoch from clock_timestamp())"  # unix seconds by the server's clock
_LOCK_KEY = 0x63616C6C  # pg_advisory_xact_lock key for migrations ("call")

#: The log's tables, version by version; never edit a shipped entry: add one. Same versions as SQLite's.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: calls and their events (data as text: the exact JSON the engine wrote, byte for byte)
        "CREATE TABLE calls (call_id text PRIMARY KEY, started_at text NOT NULL, flow text NOT NULL, "
        "schema_version integer NOT NULL, status text NOT NULL, outcome text, ended_t_ms integer, turns integer, "
        "last_seq integer, meta jsonb NOT NULL)",
        "CREATE TABLE events (call_id text NOT NULL, seq integer NOT NULL, t_ms integer NOT NULL, kind text NOT NULL, "
        "type text NOT NULL, data text NOT NULL, cause integer, PRIMARY KEY (call_id, seq))",
        "CREATE INDEX idx_calls_started_at ON calls (started_at)",
    ),
    (  # 2: ownership by lease
        "ALTER TABLE calls ADD COLUMN owner text",
        "CREATE TABLE instances (instance_id text PRIMARY KEY, lease_until double precision NOT NULL)",
        "CREATE INDEX idx_calls_open ON calls (status) WHERE status = 'open'",
    ),
)


def display_url(url: str) -> str:
    """The URL without its password (for messages): postgresql://user@host:port/db."""
    try:
        p = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://(unparsable URL)"
    user = f"{p['user']}@" if p.get("user") else ""
    port = f":{p['port']}" if p.get("port") else ""
    return f"postgresql://{user}{p.get('host', '')}{port}/{p.get('dbname', '')}"


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """How many MIGRATIONS this database has run (0: an empty database)."""
    exists = conn.execute("SELECT to_regclass('callstate_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM callstate_migrations").fetchone()
    return int(row[0]) if row else 0


def _checked(url: str) -> str:
    """The URL, once the driver can parse it: a parse error quotes the URL's text, password included, so
    it is replaced by a line that quotes nothing."""
    try:
        conninfo_to_dict(url)
    except psycopg.Error:
        raise StoreError(f"{display_url(url)}: not a valid postgresql:// URL") from None
    return url


def current_version(url: str) -> int:
    try:
        with psycopg.connect(_checked(url), connect_timeout=5) as conn:
            return schema_version(conn)
    except psycopg.Error as exc:
        raise StoreError(f"{display_url(url)}: {_first_line(exc)}") from None


def upgrade(url: str, *, to: int | None = None) -> tuple[int, int]:
    """Apply the pending migrations (up to ``to``), each in its own transaction; (version before, after)."""
    target = len(MIGRATIONS) if to is None else to
    where = display_url(url)
    try:
        with psycopg.connect(_checked(url), connect_timeout=5) as conn:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))  # two hosts upgrading at once
                before = schema_version(conn)
                if before > len(MIGRATIONS):
                    raise StoreError(f"{where}: the log's tables are version {before}; this engine knows "
                                     f"{len(MIGRATIONS)} and older (upgrade callstate)")
                conn.execute("CREATE TABLE IF NOT EXISTS callstate_migrations (version integer PRIMARY KEY, "
                             "applied_at timestamptz NOT NULL DEFAULT now())")
                for number in range(before + 1, target + 1):
                    for statement in MIGRATIONS[number - 1]:
                        conn.execute(statement)  # our own literals
                    conn.execute("INSERT INTO callstate_migrations (version) VALUES (%s)", (number,))
            return before, max(before, target)
    except psycopg.Error as exc:
        raise StoreError(f"{where}: upgrade failed: {_first_line(exc)}") from None


def _notify(conn: psycopg.Connection[Any], payloads: list[str]) -> None:
    """One round trip for every call's NOTIFY; delivered at commit, in this order, to every listener."""
    if payloads:
        conn.execute("SELECT pg_notify(%s, p) FROM unnest(%s::text[]) WITH ORDINALITY AS t(p, n) ORDER BY n",
                     (CHANNEL, payloads))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class PgStore(Store):
    """The shared log: one PostgreSQL database for every process and host."""

    def __init__(self, url: str, *, readonly: bool = False, owner: str | None = None, pool_size: int = 4) -> None:
        super().__init__(owner=owner)
        self.url, self.where, self.readonly = url, display_url(url), readonly
        try:  # one plain connection first: a wrong URL or a stopped server is one clear line, at once
            with psycopg.connect(_checked(url), connect_timeout=5) as conn:
                version = schema_version(conn)
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: cannot connect ({_first_line(exc)})") from None
        if version == 0 and not readonly:
            upgrade(url)
            version = len(MIGRATIONS)
        if version == 0:
            raise StoreError(f"{self.where}: not a callstate log (no calls and events tables)")
        if version > len(MIGRATIONS):
            raise StoreError(f"{self.where}: the log's tables are version {version}; this engine knows "
                             f"{len(MIGRATIONS)} and older (upgrade callstate)")
        if version < len(MIGRATIONS) and not readonly:
            raise StoreError(f"{self.where}: the log's tables are version {version}, this engine writes "
                             f"version {len(MIGRATIONS)}: run `engine db upgrade --db {self.where}`")
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=False, name="callstate",
                                    kwargs={"connect_timeout": 5})
        try:
            self._pool.open(wait=True, timeout=10)
            newest = self._query("SELECT max(schema_version) FROM calls")[0][0]
            if newest is not None and newest > SCHEMA_VERSION:
                raise StoreError(f"{self.where}: written with schema version {newest}; "
                                 f"this engine supports version {SCHEMA_VERSION} and older")
        except PoolTimeout:
            self._pool.close()
            raise StoreError(f"{self.where}: cannot connect (no pooled connection within 10 s)") from None
        except BaseException:
            self._pool.close()
            raise

    # ------------------------------------------------------------------------------ plumbing

    @contextmanager
    def _conn(self, what: str, conflict: Callable[[], str] | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection in one transaction (committed on exit); driver errors become StoreErrors, as
        SQLite's ``_tx`` makes them: no connection or a server restarting is StoreBusy (the writer retries
        it); a duplicate key is ``conflict()``'s message (run once the connection is back in the pool)."""
        try:
            with self._pool.connection(timeout=10) as conn:
                yield conn
        except PoolTimeout:
            raise StoreBusy(f"{self.where}: {what}: no database connection within 10 s") from None
        except psycopg.errors.UniqueViolation as exc:
            raise StoreError(conflict() if conflict else f"{self.where}: {what}: {_first_line(exc)}") from None
        except psycopg.OperationalError as exc:  # the server went away or is restarting: try again
            raise StoreBusy(f"{self.where}: {what}: {_first_line(exc)}") from None
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: {what}: {_first_line(exc)}") from None

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._conn("read") as conn:
            return conn.execute(sql, params).fetchall()  # our own literals

    def _writable(self, what: str) -> None:
        if self.readonly:
            raise StoreError(f"{self.where}: {what}: this store was opened read-only")

    # ------------------------------------------------------------------------------ Store

    def _insert_call(self, call_id: str, started_at: str, flow: str, meta: dict[str, Any]) -> None:
        self._writable("open_call")
        with self._conn("open_call", lambda: f"open_call({call_id!r}): already in {self.where}") as conn:
            conn.execute("INSERT INTO calls (call_id, started_at, flow, schema_version, status, meta, owner) "
                         "VALUES (%s, %s, %s, %s, 'open', %s, %s)",
                         (call_id, started_at, flow, SCHEMA_VERSION, Jsonb(meta), self.owner))

    def _write(self, rows: list[Row], end: End | None) -> set[str]:
        self._writable("flush")
        ids = sorted({row[0] for row in rows} | ({end[0]} if end else set()))
        with self._conn("flush", lambda: self._duplicate(rows)) as conn:
            # the calls' rows locked: a sweep skips them (SKIP LOCKED) until this commits
            still_open = {r[0] for r in conn.execute(
                "SELECT call_id FROM calls WHERE call_id = ANY(%s) AND status = 'open' ORDER BY call_id "
                "FOR NO KEY UPDATE", (ids,))}
            rows = [row for row in rows if row[0] in still_open]
            with conn.cursor() as cur:
                if len(rows) >= COPY_FROM:  # a turn's batch: one COPY stream (bench/log_store.py: ~3x)
                    with cur.copy("COPY events (call_id, seq, t_ms, kind, type, data, cause) FROM STDIN") as cp:
                        for row in rows:
                            cp.write_row(row)
                else:  # a few rows: COPY's own round trips cost more than it saves
                    cur.executemany("INSERT INTO events (call_id, seq, t_ms, kind, type, data, cause) "
                                    "VALUES (%s, %s, %s, %s, %s, %s, %s)", rows)
            if end is not None:
                call_id, outcome, ended_t_ms, turns, last_seq, extra = end
                cur2 = conn.execute("UPDATE calls SET status = 'ended', outcome = %s, ended_t_ms = %s, "
                                    "turns = %s, last_seq = %s, meta = meta || %s WHERE call_id = %s "
                                    "AND status = 'open'",
                                    (outcome, ended_t_ms, turns, last_seq, Jsonb(extra), call_id))
                if cur2.rowcount != 1:
                    raise StoreError(f"close_call({call_id!r}): the call is not open in {self.where}")
            last = {row[0]: str(row[1]) for row in rows}
            if end is not None:
                last[end[0]] = "end"
            _notify(conn, [f"{call_id} {what}" for call_id, what in last.items()])
        return set(ids) - still_open

    def _duplicate(self, rows: list[Row]) -> str:
        # Only another writer can cause this (append checks seqs): find the row it already wrote.
        for call_id, seq, *_ in rows:
            if self._query("SELECT 1 FROM events WHERE call_id = %s AND seq = %s", (call_id, seq)):
                return f"call {call_id!r} seq {seq}: already in {self.where}; the log is append-only, " \
                       "nothing was written"
        return f"{self.where}: flush: constraint failed; nothing was written"

    def _read(self, call_id: str) -> Stored:
        # One REPEATABLE READ snapshot: the call's end and its events as of the same instant.
        with self._conn("load") as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            found = conn.execute("SELECT schema_version, last_seq FROM calls WHERE call_id = %s",
                                 (call_id,)).fetchall()
            if not found:
                raise StoreError(f"no call {call_id!r} in DB")
            rows = conn.execute("SELECT seq, t_ms, kind, type, data, cause FROM events WHERE call_id = %s "
                                "ORDER BY seq", (call_id,)).fetchall()
        return found[0][0], found[0][1], rows

    def _renew(self, lease_s: float) -> None:
        self._writable("renew lease")
        with self._conn("renew lease") as conn:
            conn.execute(f"INSERT INTO instances (instance_id, lease_until) VALUES (%s, {_PG_NOW} + %s) "
                         "ON CONFLICT (instance_id) DO UPDATE SET lease_until = excluded.lease_until",
                         (self.owner, lease_s))

    def release_lease(self) -> None:
        self._writable("release lease")
        with self._conn("release lease") as conn:
            conn.execute("DELETE FROM instances WHERE instance_id = %s", (self.owner,))

    def mark_abandoned(self) -> list[str]:
        self._writable("mark_abandoned")
        lapsed = _LAPSED.format(now=_PG_NOW, me="%s")
        with self._conn("mark_abandoned") as conn:
            rows = conn.execute(
                "UPDATE calls c SET status = 'abandoned', outcome = 'abandoned', "
                "last_seq = (SELECT coalesce(max(seq), 0) FROM events e WHERE e.call_id = c.call_id), "
                "ended_t_ms = (SELECT max(t_ms) FROM events e WHERE e.call_id = c.call_id) "
                f"WHERE c.call_id IN (SELECT call_id FROM calls WHERE {lapsed} FOR UPDATE SKIP LOCKED) "
                "RETURNING c.call_id, c.started_at", (self.owner,)).fetchall()
            _notify(conn, [f"{call_id} end" for call_id, _ in rows])  # its readers: nothing more will come
        return [call_id for call_id, _ in sorted(rows, key=lambda r: (r[1], r[0]))]

    def call_sids(self) -> list[tuple[str, str]]:
        # the CallSid alone: not every call's whole meta (its flow record) decoded at a server's start
        return [(c, s) for c, s in self._query("SELECT call_id, coalesce(meta->>'call_sid', '') FROM calls "
                                                "ORDER BY started_at, call_id")]

    def _list_calls(self, since: str | None) -> list[CallRow]:
        return select_calls(self._query, "%s", since)

    def close(self, timeout: float = 30.0) -> None:
        try:
            super().close(timeout)
        finally:
            self._pool.close()

