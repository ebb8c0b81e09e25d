"""Opening the call log from the command line: the store, a call's events and the flow it ran with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine import events as ev
from engine.flow import Flow
from engine.store import CallRow, Store, StoreError, is_postgres, open_store

DEFAULT_DB = "calls.db"
DB_HELP = f"the call log: a SQLite file or a postgresql://user@host/db URL (default {DEFAULT_DB})"


@dataclass
class LoggedCall:
    row: CallRow
    flow: Flow
    events: list[ev.Event]


def open_readonly(db: str) -> Store:
    if not is_postgres(db) and not Path(db).exists():
        raise StoreError(f"{db}: no such log (run `engine call` or `engine demo` first, or pass --db)")
    return open_store(db, readonly=True)


def where(db: str) -> str:
    """The log's name for messages: a PostgreSQL URL without its password."""
    if is_postgres(db):
        from engine.pgstore import display_url

        return display_url(db)
    return db


def load_call(db: str, call_id: str) -> LoggedCall:
    store = open_readonly(db)
    try:
        rows = {r.call_id: r for r in store.list_calls()}
        if call_id not in rows:
            known = ", ".join(list(rows)[-5:]) or "none"
            raise StoreError(f"no call {call_id!r} in {where(db)} (latest: {known})")
        row = rows[call_id]
        events = store.load(call_id)
    finally:
        store.close()
    flow_data = row.meta.get("flow")
    if not isinstance(flow_data, dict):
        raise StoreError(f"call {call_id!r} in {where(db)} does not record its flow; it cannot be replayed")
    try:
        flow = Flow.model_validate(flow_data)
    except ValueError as exc:
        raise StoreError(f"call {call_id!r}: its recorded flow no longer validates: {exc}") from None
    return LoggedCall(row=row, flow=flow, events=events)
