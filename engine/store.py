"""The append-only log of every call: SQLite through sqlite-utils by default, behind one interface.

Rules:
- Append-only: an event row is written once, with a plain INSERT, and never updated or replaced. Only a
  call's summary row in ``calls`` changes, once, from ``open`` to ``ended`` or ``abandoned``.
- ``append`` only buffers (no I/O on the hot path); ``flush`` writes the whole buffer in one transaction.
  The runtime flushes at every turn boundary and at call end, so a crash loses at most the current turn.
- A call's seqs start at 1 with no gaps and no repeats: checked on ``append``, again on ``load``.
- Reading never writes: ``SqliteStore(path, readonly=True)`` opens the file with ``mode=ro``.
- The store never reads a clock: ``started_at`` (wall clock, ISO 8601, UTC advised) comes from the caller.
- What a user can get wrong (a path that is not a log, a corrupt or newer log) is a StoreError naming the
  file, or the call and the seq. No sqlite3 exception escapes.
- Ownership by lease: every writing store is an instance with an id (``owner``); each call row names its
  owner; an owner renews its lease (``renew_lease``); ``mark_abandoned`` (any instance, one idempotent
  statement) ends the open calls whose owner holds no live lease, never a live owner's. Lease times come
  from the database's clock, so hosts with skewed clocks agree. A flush never writes events of a call that
  is no longer open (another instance abandoned it after this owner's lease lapsed): those rows are dropped
  and logged, so a call's recorded end is never followed by its events.
- One server per SQLite log: ``claim(holder)`` takes the file for the server's life (an flock on
  ``<db>.lock``, released by the kernel even on kill -9) and fails with a StoreError naming the holder (a
  server's workers share its claim). A PostgreSQL log is shared by design: there leases alone keep
  servers apart, and ``claim`` only names the holder.
- ``start_writer()`` moves every write (open_call, flush, close_call) to a thread (logstore/writer.py): the
  event loop never waits on the disk or on a lock, a busy database is retried and logged, never dropped.
  Reads first wait for the queued writes (read your writes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

from engine.codec import from_record, to_record
from engine.events import SCHEMA_VERSION, Event, EventError, Message, StartLlm
from engine.redact import Redactor

log = logging.getLogger("callstate.store")

Status = Literal["open", "ended", "abandoned"]
#: How long an owner's lease lasts unless renewed (seconds). A server renews every third of it (LeaseKeeper).
DEFAULT_LEASE_S = 15.0
Row = tuple[str, int, int, str, str, str, int | None]  # call_id, seq, t_ms, kind, type, data (JSON), cause
End = tuple[str, str, int, int, int, dict[str, Any]]  # call_id, outcome, ended_t_ms, turns, last_seq, meta+
Stored = tuple[int, int | None, list[tuple[Any, ...]]]  # schema_version, last_seq, rows without call_id


class Writer(Protocol):
    """Where a live server's writes go (logstore/writer.py's thread): in order, retried, never on the loop."""

    def submit(self, op: Callable[[], None], events: int, what: str) -> None: ...
    def drain(self, timeout: float | None = None) -> bool: ...
    def stop(self, timeout: float) -> int: ...


W = TypeVar("W", bound=Writer)


class StoreError(Exception):
    """The log cannot be read or written as asked. The message names the file, or the call and seq."""


class StoreBusy(StoreError):
    """A write that may succeed if tried again (the database is locked by another process, the disk is
    full): the writer thread retries it instead of dropping it."""


@dataclass(frozen=True, slots=True)
class CallRow:
    call_id: str
    started_at: str
    flow: str
    status: Status
    outcome: str | None  # hangup | transfer | caller_hung_up | error | abandoned; None while open
    duration_ms: int | None  # = ended_t_ms, since t_ms counts from call start; None while open
    turns: int | None
    meta: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION  # of the engine that wrote it (replay reads older ones as written)


# One encoder, built once: json.dumps with options builds a new encoder per call (~0.8 us of ~8 us/event).
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _row(call_id: str, event: Event, llm_prev: dict[str, tuple[Message, ...]] | None = None) -> Row:
    """One event as a row. With ``llm_prev`` (call id -> the previous request's messages), a StartLlm is
    stored in format 2: ``messages_from`` = how many of the previous request's messages it starts with, then
    only its other messages. A call's log grows with what is said, not with its square, and only the new
    messages are turned into records and encoded."""
    if llm_prev is not None and isinstance(event, StartLlm):
        msgs, prev = event.messages, llm_prev.get(call_id, ())
        keep, most = 0, min(len(prev), len(msgs))
        while keep < most and (prev[keep] is msgs[keep] or prev[keep] == msgs[keep]):
            keep += 1
        llm_prev[call_id] = msgs
        r = to_record(call_id, dataclasses.replace(event, messages=msgs[keep:]))
        data = {"messages_from": keep, **r["data"]}
    else:
        r = to_record(call_id, event)  # the one envelope definition lives in codec.py
        data = r["data"]
    return (call_id, r["seq"], r["t_ms"], r["kind"], r["type"], _encode(data), r["cause"])


def _rebuild_llm(call_id: str, seq: int, payload: dict[str, Any], prev: list[Any]) -> list[Any]:
    """A format-2 StartLlm's whole context from the previous request's (the one place it is rebuilt)."""
    keep = payload.pop("messages_from", None)
    new = payload.get("messages")
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 0 or not isinstance(new, list):
        raise StoreError(f"call {call_id!r} seq {seq}: StartLlm needs messages_from (a count) and messages "
                         "(schema version 2)")
    if keep > len(prev):
        raise StoreError(f"call {call_id!r} seq {seq}: StartLlm keeps {keep} messages of the previous request, "
                         f"which had {len(prev)}")
    whole: list[Any] = prev[:keep] + new
    payload["messages"] = whole
    return whole


def _records(call_id: str, stored: Stored) -> list[dict[str, Any]]:
    """Check a call's stored rows (version, seqs, JSON, end) and turn them into envelopes."""
    version, last_seq, rows = stored
    if version > SCHEMA_VERSION:
        raise StoreError(f"call {call_id!r} was written with schema version {version}; "
                         f"this engine supports version {SCHEMA_VERSION} and older")
    out = []
    llm_prev: list[Any] = []  # format 2: the previous request's whole context
    for expected, (seq, t_ms, kind, type_, data, cause) in enumerate(rows, start=1):
        if seq != expected:  # rows come sorted and unique, so the first mismatch is a gap or a seq < 1
            raise StoreError(f"call {call_id!r} seq {expected} is missing: the log goes from seq "
                             f"{expected - 1} to seq {seq}" if seq > expected
                             else f"call {call_id!r} seq {seq}: invalid seq (seqs start at 1)")
        try:
            payload = json.loads(data)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"call {call_id!r} seq {seq}: data is not valid JSON ({exc})") from None
        except RecursionError:
            raise StoreError(f"call {call_id!r} seq {seq}: data nests too deeply to read") from None
        if version >= 2 and type_ == "StartLlm" and isinstance(payload, dict):
            llm_prev = _rebuild_llm(call_id, seq, payload, llm_prev)
        out.append({"call_id": call_id, "seq": seq, "t_ms": t_ms, "kind": kind, "type": type_,
                    "data": payload, "cause": cause})
    if last_seq is not None and len(rows) < last_seq:
        raise StoreError(f"call {call_id!r} is truncated: it ended at seq {last_seq} but the log stops at "
                         f"seq {len(rows)} (seq {len(rows) + 1} is missing)")
    if last_seq is not None and len(rows) > last_seq:
        raise StoreError(f"call {call_id!r} seq {last_seq + 1}: logged after the call ended "
                         f"at seq {last_seq}")
    return out


def new_owner_id() -> str:
    """An instance id that names where it runs (for people reading `engine calls`) and is unique."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Store(ABC):
    """One interface for every backend (SQLite, PostgreSQL in logstore/postgres.py, memory for tests).

    The seq checks, the buffer and the writer thread live here; a backend supplies storage:

    - ``_insert_call`` and ``_write`` (the rows of calls still open and, at call end, the summary,
      atomically; a duplicate is a StoreError naming call and seq; a transient failure is StoreBusy, and is
      retried; returns the calls whose rows it dropped because they are no longer open). Once
      ``start_writer`` has run, both are called from the writer thread, one at a time, in order.
    - ``_read`` and ``list_calls`` (calls started at or after ``since``, ISO text compared as text, oldest
      first), which may run on another thread than the writes.
    - ``claim(holder)``: make this server the log's one live writer where the backend needs it (SQLite),
      or raise a StoreError naming the holder; calling it again updates the holder's description.
    - ``_renew`` / ``release_lease``: this owner's lease. ``mark_abandoned``: every open call whose owner's
      lease has lapsed (never this owner's), in one idempotent statement; any instance may run it.
    """

    def __init__(self, *, owner: str | None = None) -> None:
        self._pending: list[tuple[str, Event]] = []
        self._next_seq: dict[str, int] = {}  # call open in this store -> the seq append expects next
        #: Called with (call_id, event) on every append and (call_id, None) when the call closes, in the
        #: appending thread: a live event stream's in-process source (callstate/eventfeed.py).
        self.listeners: list[Callable[[str, Event | None], None]] = []
        self.owner = owner or new_owner_id()
        self._leased = False
        self._llm_prev: dict[str, tuple[Message, ...]] = {}  # open call -> its previous request's messages
        self.writer: Writer | None = None
        self.redact: Redactor = Redactor()  # secrets masked in every row and meta written from now on

    def renew_lease(self, lease_s: float = DEFAULT_LEASE_S) -> None:
        """Hold (or extend) this owner's lease for lease_s seconds from now, by the database's clock."""
        self._renew(lease_s)
        self._leased = True

    def start_writer(self, writer: W) -> W:
        """From now on, writes are queued to ``writer``'s thread (logstore/writer.py); ``close`` drains it."""
        if self.writer is None:
            self.flush()
            self.writer = writer
        return self.writer  # type: ignore[return-value]  # the one given, unless one was running already

    def _run(self, op: Callable[[], None], events: int, what: str) -> None:
        if self.writer is None:
            op()
        else:
            self.writer.submit(op, events, what)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait for the writes queued so far; True when they are done (always, without a writer)."""
        return self.writer is None or self.writer.drain(timeout)

    def open_call(self, call_id: str, *, started_at: str, flow: str,
                  meta: dict[str, Any] | None = None) -> None:
        try:
            datetime.fromisoformat(started_at)
        except (TypeError, ValueError):
            raise StoreError(f"open_call({call_id!r}): started_at must be ISO 8601 text, "
                             f"got {started_at!r}") from None
        if call_id in self._next_seq:
            raise StoreError(f"open_call({call_id!r}): the call is already open in this store")
        lease = not self._leased  # a writer without a keeper (engine call, demo) still owns what it opens
        self._leased = True
        meta = self._masked(meta or {})

        def insert() -> None:  # on the writer thread when there is one: a locked log never blocks the caller
            if lease:
                self._renew(DEFAULT_LEASE_S)
            self._insert_call(call_id, started_at, flow, meta)
        self._run(insert, 0, f"open_call({call_id!r})")
        self._next_seq[call_id] = 1

    def append(self, call_id: str, event: Event) -> None:
        """Buffer one event (no I/O). Its seq must be the call's next one, so a gap never reaches the log."""
        expected = self._next_seq.get(call_id)
        if expected is None:
            raise StoreError(f"append to call {call_id!r} seq {event.seq}: "
                             "the call is not open in this store")
        if event.seq != expected:
            raise StoreError(f"call {call_id!r} seq {event.seq}: expected seq {expected} "
                             "(seqs start at 1, with no gaps and no repeats)")
        self._next_seq[call_id] = expected + 1
        self._pending.append((call_id, event))
        for listener in self.listeners:
            listener(call_id, event)

    def flush(self) -> None:
        """Write every buffered event in one transaction. On failure nothing is written, the buffer stays."""
        if self._pending:
            self._commit(None)

    def close_call(self, call_id: str, *, outcome: str, ended_t_ms: int, turns: int,
                   meta: dict[str, Any] | None = None) -> None:
        """Flush, and mark the call ended in the same transaction (its events and its end land together).
        ``meta`` adds keys to the call's meta (measures known only at the end, like engine time)."""
        if call_id not in self._next_seq:
            raise StoreError(f"close_call({call_id!r}): the call is not open in this store")
        self._commit((call_id, outcome, ended_t_ms, turns, self._next_seq[call_id] - 1, self._masked(meta or {})))
        del self._next_seq[call_id]
        self._llm_prev.pop(call_id, None)
        for listener in self.listeners:
            listener(call_id, None)

    def _masked(self, meta: dict[str, Any]) -> dict[str, Any]:
        """A call's meta as the log may keep it: every known secret masked (at open and at close alike)."""
        return json.loads(self.redact(json.dumps(meta))) if self.redact and meta else meta

    def is_open_here(self, call_id: str) -> bool:
        """The call is live in this store (appends to it still come)."""
        return call_id in self._next_seq

    def pending_records(self, call_id: str) -> list[dict[str, Any]]:
        """The call's envelopes appended but not yet handed to the writer (a live call's tail). Taken in the
        appending thread; with ``load_records`` (which waits for what was handed over) it is the whole log."""
        return [self.envelope(cid, e) for cid, e in self._pending if cid == call_id]

    def envelope(self, call_id: str, event: Event) -> dict[str, Any]:
        """The event's envelope exactly as the log will hold it: secrets masked (what a reader may see)."""
        record = to_record(call_id, event)
        if self.redact:
            record["data"] = json.loads(self.redact(_encode(record["data"])))
        return record

    def _commit(self, end: End | None) -> None:
        # Serialised here, not in append: append stays a list append on the hot path.
        llm_prev = dict(self._llm_prev)  # taken on only once the write is done or queued: a retry re-encodes
        rows = [_row(call_id, event, llm_prev) for call_id, event in self._pending]
        what = f"close_call({end[0]!r})" if end else "flush"
        redact = self.redact

        def write() -> None:  # masking runs here: on the writer thread once there is one
            self._write_open([(*r[:5], redact(r[5]), r[6]) for r in rows] if redact else rows, end)
        self._run(write, len(rows), what)
        self._llm_prev = llm_prev
        self._pending.clear()

    def _write_open(self, rows: list[Row], end: End | None) -> None:
        dropped = self._write(rows, end)
        for call_id in sorted(dropped):
            log.warning("call %s: no longer open (abandoned by another instance after this one's lease "
                        "lapsed); its new events were not written", call_id)

    def load_records(self, call_id: str) -> list[dict[str, Any]]:
        """The call's flushed envelopes in seq order; checks version, seqs, JSON and truncation."""
        self.drain()
        return _records(call_id, self._read(call_id))

    def load_since(self, call_id: str, after_seq: int) -> tuple[list[dict[str, Any]], bool]:
        """The call's envelopes after ``after_seq`` (all checked as in load_records), and whether the call
        has ended (or was abandoned): then nothing more will come."""
        self.drain()
        stored = self._read(call_id)
        return [r for r in _records(call_id, stored) if r["seq"] > after_seq], stored[1] is not None

    def load(self, call_id: str) -> list[Event]:
        """The call's flushed events in seq order; also checks each record's type, kind and fields."""
        events = []
        for record in self.load_records(call_id):
            try:
                events.append(from_record(record))
            except EventError as exc:
                where, msg = f"call {call_id!r} seq {record['seq']}", str(exc)
                raise StoreError(msg if msg.startswith(where) else f"{where}: {msg}") from None
        return events

    def close(self, timeout: float = 30.0) -> None:
        """Flush what is buffered, let the writer finish (up to ``timeout`` s), then release the backend."""
        self.flush()
        if self.writer is not None:
            self.writer.stop(timeout)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def _insert_call(self, call_id: str, started_at: str, flow: str, meta: dict[str, Any]) -> None: ...

    @abstractmethod
    def _write(self, rows: list[Row], end: End | None) -> set[str]: ...

    @abstractmethod
    def _read(self, call_id: str) -> Stored: ...

    @abstractmethod
    def _renew(self, lease_s: float) -> None: ...

    @abstractmethod
    def release_lease(self) -> None:
        """Give the lease up (clean shutdown): what this owner left open is abandoned by the next sweep."""

    def claim(self, holder: str) -> None:
        """Make this server the log's one live writer (SQLite overrides it). A shared log (PostgreSQL) or one
        in memory needs no claim: leases keep servers' calls apart."""
        return None

    @abstractmethod
    def mark_abandoned(self) -> list[str]:
        """Mark abandoned every open call whose owner holds no live lease (never this owner's); their ids."""

    def list_calls(self, since: str | None = None) -> list[CallRow]:
        self.drain()
        return self._list_calls(since)

    def call_sids(self) -> list[tuple[str, str]]:
        """(call_id, the CallSid in its meta, or "") for every call, oldest first: what a server reads once
        at start so that choosing a live call's id never reads the log. Backends may answer it cheaper."""
        return [(r.call_id, str(r.meta.get("call_sid") or "")) for r in self.list_calls()]

    @abstractmethod
    def _list_calls(self, since: str | None) -> list[CallRow]: ...


_CALL_COLS = "call_id, started_at, flow, status, outcome, ended_t_ms, turns, meta, schema_version"


def select_calls(query: Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]], mark: str,
                 since: str | None) -> list[CallRow]:
    """list_calls for a SQL backend (``mark``: its parameter placeholder)."""
    where, params = (f"WHERE started_at >= {mark}", (since,)) if since is not None else ("", ())
    rows = query(f"SELECT {_CALL_COLS} FROM calls {where} ORDER BY started_at, call_id", params)
    return [_call_row(r) for r in rows]


def _call_row(row: tuple[Any, ...]) -> CallRow:
    call_id, started_at, flow, status, outcome, ended_t_ms, turns, meta, version = row
    try:
        meta = json.loads(meta) if isinstance(meta, str) else dict(meta)
    except ValueError as exc:
        raise StoreError(f"call {call_id!r}: meta is not valid JSON ({exc})") from None
    except RecursionError:
        raise StoreError(f"call {call_id!r}: meta nests too deeply to read") from None
    return CallRow(call_id, started_at, flow, status, outcome, ended_t_ms, turns, meta, version)


#: An open call is lapsed when its owner holds no live lease (or it has no owner: a log from before leases).
_LAPSED = ("status = 'open' AND owner IS DISTINCT FROM {me} AND (owner IS NULL OR owner NOT IN "
           "(SELECT instance_id FROM instances WHERE lease_until > {now}))")

