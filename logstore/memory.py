"""The same log in memory, for tests and benchmarks (engine/store.py holds the interface and its rules)."""

from __future__ import annotations

import time
from typing import Any

from engine.events import SCHEMA_VERSION
from engine.store import _CALL_COLS, CallRow, End, Row, Store, Stored, StoreError, _call_row


class MemoryStore(Store):
    """The same log in dicts, for tests and benchmarks. Data is kept as JSON text, as SQLite keeps it."""

    def __init__(self, *, owner: str | None = None) -> None:
        super().__init__(owner=owner)
        self.calls: dict[str, dict[str, Any]] = {}
        self.events: dict[str, dict[int, Row]] = {}
        self.instances: dict[str, float] = {}  # owner -> lease end (time.monotonic(): one process)

    def _insert_call(self, call_id: str, started_at: str, flow: str, meta: dict[str, Any]) -> None:
        if call_id in self.calls:
            raise StoreError(f"open_call({call_id!r}): the call is already in the store")
        self.calls[call_id] = {"call_id": call_id, "started_at": started_at, "flow": flow, "status": "open",
                               "outcome": None, "ended_t_ms": None, "turns": None, "meta": dict(meta),
                               "schema_version": SCHEMA_VERSION, "last_seq": None, "owner": self.owner}

    def _write(self, rows: list[Row], end: End | None) -> set[str]:
        # No duplicate check: no other writer shares these dicts, and append already checked every seq.
        if end is not None and self.calls[end[0]]["status"] != "open":  # checked first: all or nothing
            raise StoreError(f"close_call({end[0]!r}): the call is not open in the store")
        dropped = {row[0] for row in rows if self.calls[row[0]]["status"] != "open"}
        for row in rows:
            if row[0] not in dropped:
                self.events.setdefault(row[0], {})[row[1]] = row
        if end is not None:
            call_id, outcome, ended_t_ms, turns, last_seq, extra = end
            self.calls[call_id].update(status="ended", outcome=outcome, ended_t_ms=ended_t_ms, turns=turns,
                                       last_seq=last_seq)
            self.calls[call_id]["meta"].update(extra)
        return dropped

    def _read(self, call_id: str) -> Stored:
        if call_id not in self.calls:
            raise StoreError(f"no call {call_id!r} in DB")
        call = self.calls[call_id]
        rows = [row[1:] for _, row in sorted(self.events.get(call_id, {}).items())]
        return call["schema_version"], call["last_seq"], rows

    def _renew(self, lease_s: float) -> None:
        self.instances[self.owner] = time.monotonic() + lease_s

    def release_lease(self) -> None:
        self.instances.pop(self.owner, None)

    def mark_abandoned(self) -> list[str]:
        ids, now = [], time.monotonic()
        for call_id, call in sorted(self.calls.items(), key=lambda kv: (kv[1]["started_at"], kv[0])):
            owner = call["owner"]
            if call["status"] == "open" and owner != self.owner and self.instances.get(owner, 0) <= now:
                rows = self.events.get(call_id, {})
                call.update(status="abandoned", outcome="abandoned", last_seq=max(rows, default=0),
                            ended_t_ms=max((r[2] for r in rows.values()), default=None))
                ids.append(call_id)
        return ids

    def _list_calls(self, since: str | None) -> list[CallRow]:
        calls = sorted(self.calls.values(), key=lambda c: (c["started_at"], c["call_id"]))
        return [_call_row(tuple(c[k] for k in _CALL_COLS.split(", ")))
                for c in calls if since is None or c["started_at"] >= since]
