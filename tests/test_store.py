"""engine/store.py and logstore/postgres.py: the append-only log. One conformance suite runs against every
backend (SQLite, PostgreSQL, memory); corruption is made with raw SQL, as a disk or a hand would."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from engine.codec import to_record
from engine.events import (
    SCHEMA_VERSION,
    CallStarted,
    Dtmf,
    Hangup,
    LlmToken,
    Message,
    SetTimer,
    StartLlm,
    ToolSpec,
    Transcript,
)
from engine.store import CallRow, Store, StoreError
from logstore import open_store
from logstore.memory import MemoryStore
from logstore.sqlite import SqliteStore
from logstore.writer import LogWriter

T0 = "2025-06-01T10:00:00+00:00"
EVENTS = [
    CallStarted(t_ms=0, seq=1, call_sid="CA1", params={"lang": "en"}, seed=7),
    Transcript(t_ms=5, seq=2, text="hi", is_final=True),
    StartLlm(t_ms=10, seq=3, messages=(Message(role="user", content="hi"),),
             tools=(ToolSpec(name="book", description="Book a slot"),)),
    LlmToken(t_ms=20, seq=4, cause=3, text="Héllo"),
    SetTimer(t_ms=21, seq=5, name="endpoint", at_ms=321),
    Dtmf(t_ms=30, seq=6, digit="#"),
    Hangup(t_ms=40, seq=7, reason="done"),
]


def write_call(store: Store, call_id: str = "c1", *, started_at: str = T0, close: bool = True) -> None:
    store.open_call(call_id, started_at=started_at, flow="demo", meta={"from": "+15550100"})
    for event in EVENTS:
        store.append(call_id, event)
    if close:
        store.close_call(call_id, outcome="hangup", ended_t_ms=40, turns=1)
    else:
        store.flush()


def raw(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        with conn:
            return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def checkpointed_digest(path: Path) -> tuple[str, int]:
    raw(path, "PRAGMA wal_checkpoint(TRUNCATE)")  # fold the WAL into the file, so the file is the whole db
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def chained(exc: BaseException) -> BaseException | None:
    return exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def another(store: Store) -> Store:
    """A second instance (another process or host) on the same log, with its own owner id."""
    if isinstance(store, MemoryStore):
        new = MemoryStore()
        new.calls, new.events, new.instances = store.calls, store.events, store.instances
        return new
    return open_store(str(store.path) if isinstance(store, SqliteStore) else store.url)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- every backend


def test_round_trip_gives_back_equal_events_in_seq_order(store: Store) -> None:
    write_call(store)
    assert store.load("c1") == EVENTS
    assert store.load_records("c1") == [to_record("c1", e) for e in EVENTS]


def test_append_rejects_a_repeated_or_skipped_seq_naming_call_and_seq(store: Store) -> None:
    store.open_call("c1", started_at=T0, flow="demo")
    store.append("c1", EVENTS[0])
    with pytest.raises(StoreError, match=r"call 'c1' seq 1: expected seq 2"):
        store.append("c1", EVENTS[0])
    with pytest.raises(StoreError, match=r"call 'c1' seq 3: expected seq 2"):
        store.append("c1", EVENTS[2])
    with pytest.raises(StoreError, match=r"call 'c1' seq 0: expected seq 2"):
        store.append("c1", Dtmf(t_ms=1, digit="1"))  # seq 0: never fed


def test_append_needs_an_open_call(store: Store) -> None:
    with pytest.raises(StoreError, match=r"'nope'.*not open"):
        store.append("nope", EVENTS[0])
    write_call(store)
    with pytest.raises(StoreError, match=r"'c1'.*not open"):
        store.append("c1", Dtmf(t_ms=50, seq=8, digit="1"))


def test_a_call_id_is_opened_once(store: Store) -> None:
    write_call(store)
    with pytest.raises(StoreError, match=r"open_call\('c1'\): .*already in"):
        store.open_call("c1", started_at=T0, flow="demo")


def test_started_at_must_be_iso_text(store: Store) -> None:
    with pytest.raises(StoreError, match="started_at must be ISO 8601"):
        store.open_call("c1", started_at="yesterday", flow="demo")


def test_unknown_call_names_it(store: Store) -> None:
    with pytest.raises(StoreError, match=r"^no call 'nope' in DB$"):
        store.load("nope")


def test_list_calls_reports_status_outcome_duration_and_turns(store: Store) -> None:
    write_call(store, "c1", started_at="2025-06-01T10:00:00+00:00")
    write_call(store, "c2", started_at="2025-06-02T10:00:00+00:00", close=False)
    assert store.list_calls() == [
        CallRow("c1", "2025-06-01T10:00:00+00:00", "demo", "ended", "hangup", 40, 1, {"from": "+15550100"}),
        CallRow("c2", "2025-06-02T10:00:00+00:00", "demo", "open", None, None, None, {"from": "+15550100"}),
    ]
    assert [c.call_id for c in store.list_calls(since="2025-06-02")] == ["c2"]


def test_mark_abandoned_leaves_calls_this_store_has_open(store: Store) -> None:
    write_call(store, "live", close=False)
    store.claim("test")
    assert store.mark_abandoned() == []
    assert store.list_calls()[0].status == "open"


def test_a_live_owner_s_calls_are_never_abandoned_by_another_instance(store: Store) -> None:
    write_call(store, "live", close=False)  # open_call took a lease
    other = another(store)
    try:
        assert other.mark_abandoned() == []
        assert [c.status for c in other.list_calls()] == ["open"]
    finally:
        other.close()


def test_calls_of_a_lapsed_owner_are_abandoned_once_by_any_instance(store: Store) -> None:
    write_call(store, "done")
    write_call(store, "cut", close=False)
    store.renew_lease(0)  # the owner stops renewing (killed): its lease runs out
    other = another(store)
    try:
        assert other.mark_abandoned() == ["cut"]
        assert other.mark_abandoned() == []  # idempotent
        assert {c.call_id: (c.status, c.outcome, c.duration_ms) for c in other.list_calls()} == {
            "done": ("ended", "hangup", 40), "cut": ("abandoned", "abandoned", 40)}
        assert other.load("cut") == EVENTS  # what was flushed before the crash stays readable
    finally:
        other.close()


def test_a_released_lease_lets_the_next_sweep_end_what_was_left_open(store: Store) -> None:
    write_call(store, "left", close=False)
    store.release_lease()
    other = another(store)
    try:
        assert other.mark_abandoned() == ["left"]
    finally:
        other.close()


def test_an_owner_whose_call_was_abandoned_writes_none_of_it_again(store: Store) -> None:
    store.open_call("c1", started_at=T0, flow="demo")
    for event in EVENTS[:4]:
        store.append("c1", event)
    store.flush()
    store.renew_lease(0)  # a stall longer than the lease: another instance takes the call as dead
    other = another(store)
    try:
        assert other.mark_abandoned() == ["c1"]
        store.renew_lease()  # the stalled owner wakes up and goes on
        for event in EVENTS[4:]:
            store.append("c1", event)
        store.flush()  # dropped, not written after the recorded end
        with pytest.raises(StoreError, match=r"close_call\('c1'\): the call is not open"):
            store.close_call("c1", outcome="hangup", ended_t_ms=40, turns=1)
        assert other.load("c1") == EVENTS[:4]  # the log stays consistent: the call ends where it was cut
        assert other.list_calls()[0].status == "abandoned"
    finally:
        other.close()


def test_one_claim_per_log_and_the_refusal_names_the_holder(db_path: Path) -> None:
    owner, other = SqliteStore(db_path), SqliteStore(db_path)
    owner.claim("engine serve on 127.0.0.1:8080")
    with pytest.raises(StoreError, match=r"in use by pid \d+: engine serve on 127.0.0.1:8080; one live writer"):
        other.claim("engine serve on 127.0.0.1:8081")
    owner.close()  # closing gives the log up
    other.claim("engine serve on 127.0.0.1:8081")
    other.close()


def test_the_writer_thread_keeps_order_and_reads_see_queued_writes(db_path: Path) -> None:
    store = SqliteStore(db_path)
    store.start_writer(LogWriter("test"))
    write_call(store, "c1")
    write_call(store, "c2", close=False)
    assert store.load("c1") == EVENTS and store.load("c2") == EVENTS
    assert [c.status for c in store.list_calls()] == ["ended", "open"]
    store.close()
    assert store.writer is not None and store.writer.stats.written_events == 2 * len(EVENTS)


def test_a_locked_database_is_retried_not_dropped(db_path: Path) -> None:
    store = SqliteStore(db_path)
    store._db.conn.execute("PRAGMA busy_timeout = 10")
    writer = store.start_writer(LogWriter("test", stall_log_s=0.0))
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    write_call(store, "c1")
    assert not writer.drain(0.3) and writer.pending_events == len(EVENTS)
    other.execute("COMMIT")
    other.close()
    assert writer.drain(10)
    assert store.load("c1") == EVENTS and writer.stats.retries > 0 and writer.stats.lost_events == 0
    store.close()


def test_close_flushes_what_is_buffered(db_path: Path) -> None:
    store = SqliteStore(db_path)
    store.open_call("c1", started_at=T0, flow="demo")
    store.append("c1", EVENTS[0])
    store.close()
    assert SqliteStore(db_path, readonly=True).load("c1") == EVENTS[:1]


def test_memory_store_refuses_a_call_from_a_newer_schema() -> None:
    store = MemoryStore()
    write_call(store)
    store.calls["c1"]["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(StoreError, match=f"'c1'.*schema version {SCHEMA_VERSION + 1}.*{SCHEMA_VERSION}"):
        store.load("c1")


# ---------------------------------------------------------------------------------------------- SQLite


def test_appends_reach_the_db_only_at_flush(db_path: Path) -> None:
    store = SqliteStore(db_path)
    store.open_call("c1", started_at=T0, flow="demo")
    for event in EVENTS[:3]:
        store.append("c1", event)
    assert raw(db_path, "SELECT count(*) FROM events") == [(0,)]  # a second connection sees nothing yet
    store.flush()
    assert raw(db_path, "SELECT seq FROM events ORDER BY seq") == [(1,), (2,), (3,)]
    store.close()


def test_close_call_writes_the_last_events_and_the_end_together(db_path: Path) -> None:
    store = SqliteStore(db_path)
    write_call(store)
    assert raw(db_path, "SELECT status, outcome, ended_t_ms, turns, last_seq FROM calls") == [
        ("ended", "hangup", 40, 1, 7)]
    assert raw(db_path, "SELECT count(*) FROM events") == [(7,)]
    store.close()


def test_a_seq_another_writer_already_wrote_fails_the_flush_and_writes_nothing(db_path: Path) -> None:
    store = SqliteStore(db_path)
    store.open_call("c1", started_at=T0, flow="demo")
    for event in EVENTS[:4]:
        store.append("c1", event)
    raw(db_path, "INSERT INTO events VALUES ('c1', 4, 0, 'input', 'Dtmf', '{\"digit\":\"1\"}', NULL)")
    with pytest.raises(StoreError, match=r"call 'c1' seq 4: already in .*append-only"):
        store.flush()
    assert raw(db_path, "SELECT seq FROM events") == [(4,)]  # the batch rolled back as one
    raw(db_path, "DELETE FROM events")
    store.flush()  # the failed batch stayed buffered, nothing lost
    assert store.load("c1") == EVENTS[:4]
    store.close()


P = pytest.param
CORRUPTIONS = [  # (raw SQL done to a closed call of seqs 1..7, the StoreError it must give)
    P("UPDATE events SET data = '{\"text\": ' WHERE seq = 2", r"call 'c1' seq 2: data is not valid JSON",
      id="bad_json"),
    P("UPDATE events SET data = '[1]' WHERE seq = 2", r"call 'c1' seq 2: data must be an object",
      id="data_not_object"),
    P("UPDATE events SET type = 'Teleport' WHERE seq = 3", r"call 'c1' seq 3: unknown event type 'Teleport'",
      id="unknown_type"),
    P("UPDATE events SET kind = 'input' WHERE seq = 3", r"call 'c1' seq 3: StartLlm is kind 'effect'",
      id="wrong_kind"),
    P("UPDATE events SET data = '{\"text\": 5, \"is_final\": true}' WHERE seq = 2",
      r"call 'c1' seq 2 Transcript.text: expected str", id="wrong_field_type"),
    P("UPDATE events SET data = '{\"digit\": \"#\", \"x\": 1}' WHERE seq = 6", r"call 'c1' seq 6: .*\['x'\]",
      id="unknown_field"),
    P("UPDATE events SET t_ms = -1 WHERE seq = 5", r"call 'c1' seq 5: SetTimer.t_ms must be",
      id="negative_t_ms"),
    P("DELETE FROM events WHERE seq = 3", r"call 'c1' seq 3 is missing: the log goes from seq 2 to seq 4",
      id="gap"),
    P("DELETE FROM events WHERE seq >= 6", r"call 'c1' is truncated: .*seq 7 .*seq 5 \(seq 6 is missing\)",
      id="truncated"),
    P("INSERT INTO events VALUES ('c1', 8, 50, 'input', 'TtsDone', '{}', NULL)",
      r"call 'c1' seq 8: logged after the call ended at seq 7", id="after_end"),
    P("INSERT INTO events VALUES ('c1', 0, 0, 'input', 'TtsDone', '{}', NULL)",
      r"call 'c1' seq 0: invalid seq", id="seq_0"),
]


@pytest.mark.parametrize(("sql", "message"), CORRUPTIONS)
def test_a_corrupt_record_is_a_store_error_naming_call_and_seq(db_path: Path, sql: str, message: str) -> None:
    with SqliteStore(db_path) as store:
        write_call(store)
    raw(db_path, sql)
    reader = SqliteStore(db_path, readonly=True)
    with pytest.raises(StoreError, match=message) as info:
        reader.load("c1")
    assert chained(info.value) is None  # one clean message, no sqlite3/json traceback behind it
    reader.close()


def test_loading_never_changes_the_file(db_path: Path) -> None:
    with SqliteStore(db_path) as store:
        write_call(store, "c1")
        write_call(store, "c2", close=False)
    before = checkpointed_digest(db_path)
    for store in (SqliteStore(db_path, readonly=True), SqliteStore(db_path)):
        store.load("c1"), store.load_records("c2"), store.list_calls()
        with pytest.raises(StoreError):
            store.load("nope")
        store.close()
    assert checkpointed_digest(db_path) == before


def test_a_read_only_store_cannot_write(db_path: Path) -> None:
    SqliteStore(db_path).close()
    reader = SqliteStore(db_path, readonly=True)
    with pytest.raises(StoreError, match="readonly"):
        reader.open_call("c1", started_at=T0, flow="demo")
    reader.close()


def test_the_log_is_in_wal_mode_with_synchronous_normal(db_path: Path) -> None:
    store = SqliteStore(db_path)
    assert raw(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert store._db.execute("PRAGMA synchronous").fetchone() == (1,)  # 1 = NORMAL
    store.close()


@pytest.mark.parametrize("readonly", [False, True])
def test_a_log_from_a_newer_schema_is_refused_naming_both_versions(db_path: Path, readonly: bool) -> None:
    with SqliteStore(db_path) as store:
        write_call(store)
    raw(db_path, "UPDATE calls SET schema_version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}; .*supports version "
                                         f"{SCHEMA_VERSION} and older"):
        SqliteStore(db_path, readonly=readonly)


@pytest.mark.parametrize("readonly", [False, True])
def test_a_file_that_is_not_sqlite_is_a_clean_error(tmp_path: Path, readonly: bool) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("call notes, not a database\n" * 100)
    with pytest.raises(StoreError, match=r"notes\.txt: not a SQLite database") as info:
        SqliteStore(path, readonly=readonly)
    assert chained(info.value) is None
    assert path.read_text() == "call notes, not a database\n" * 100


def test_a_missing_file_or_another_apps_db_is_refused_by_a_reader(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such file"):
        SqliteStore(tmp_path / "missing.db", readonly=True)
    raw(tmp_path / "other.db", "CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a callstate log"):
        SqliteStore(tmp_path / "other.db", readonly=True)


def test_a_turn_sized_flush_round_trips(store: Store) -> None:
    """Big enough for PostgreSQL's COPY path (logstore/postgres.py COPY_FROM), small ones take INSERT."""
    store.open_call("c1", started_at=T0, flow="demo")
    events = [Dtmf(t_ms=i, seq=i, digit=str(i % 10)) for i in range(1, 101)]
    for e in events[:5]:
        store.append("c1", e)
    store.flush()
    for e in events[5:]:
        store.append("c1", e)
    store.flush()
    assert store.load("c1") == events
