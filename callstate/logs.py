"""Opening the call log from the command line: the store, a call's events and the flow it ran with."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine import events as ev
from engine.flow import Flow
from engine.store import CallRow, Store, StoreError
from logstore import is_postgres, open_store
from replay import callfile

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
        from logstore.postgres import display_url

        return display_url(db)
    return db


def is_call_file(ref: str) -> bool:
    """A CALL_ID argument that names an `engine export` file rather than a call in the DB."""
    return ref.endswith(".jsonl") or Path(ref).is_file()


def load_file(path: str) -> LoggedCall:
    try:
        cf = callfile.load(path)
    except callfile.CallFileError as exc:
        raise StoreError(str(exc)) from None
    end = cf.events[-1].t_ms if cf.events else None
    row = CallRow(cf.call_id, "", cf.flow.name, "ended", cf.outcome, end, None, {}, cf.schema_version)
    return LoggedCall(row=row, flow=cf.flow, events=cf.events)


def load_call(db: str, call_id: str) -> LoggedCall:
    """A call from the DB by id, or from an exported FILE.jsonl."""
    if is_call_file(call_id):
        return load_file(call_id)
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


_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> str:
    """`--since`: an ISO date or time (UTC unless it names a zone), `today`, `yesterday`, or an age such as
    `30m`, `1h`, `2d`, `1w`. Returns the instant as the log stores start times (ISO, UTC); refuses the rest,
    so a typo never turns a CI gate into a check of nothing."""
    now = now or datetime.now(UTC)
    word = text.strip().lower()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if word in ("today", "yesterday"):
        at = today - timedelta(days=word == "yesterday")
    elif (m := re.fullmatch(r"(\d+)\s*([mhdw])", word)) is not None:
        at = now - timedelta(**{_UNITS[m[2]]: int(m[1])})
    else:
        try:
            at = datetime.fromisoformat(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a time: use an ISO date or time (2026-11-29, 2026-11-29T14:00Z), "
                "today, yesterday, or an age (30m, 1h, 2d, 1w)") from None
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="seconds")


def add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=DEFAULT_DB, help=DB_HELP)


def add_since(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", type=parse_since, metavar="WHEN",
                   help="only calls started since WHEN: 2026-11-29, 2026-11-29T14:00Z, today, yesterday, 30m, 2d")
