"""Log format v2: a StartLlm row holds only the messages that are new since the call's previous request
(``messages_from`` = how many of the previous request's messages it keeps), so a call's log grows linearly;
loading rebuilds each request's whole context; version-1 logs (whole histories) still load and replay;
`engine check` fails a call whose rebuilt context differs from what the machine sent."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from callstate.cli import main
from engine.codec import to_record
from engine.events import SCHEMA_VERSION, CallStarted, Message, StartLlm, Transcript
from engine.store import Store, StoreError
from logstore.sqlite import SqliteStore
from tests.callhelper import BARGE_AND_TOOL, make_call
from tests.test_check import sql as raw
from tests.test_store import T0

SYSTEM = Message(role="system", content="You are terse.")
U1, A1 = Message(role="user", content="hi"), Message(role="assistant", content="Hello.")
U2, A2 = Message(role="user", content="my parcel?"), Message(role="assistant", content="Which number?")
U3 = Message(role="user", content="451992")
REQUESTS = [(SYSTEM, U1), (SYSTEM, U1, A1, U2), (SYSTEM, U1, A1, U2, A2, U3),
            (Message(role="system", content="New node."), U3)]  # a node change: a fresh context


def events() -> list:
    out: list = [CallStarted(t_ms=0, seq=1, seed=1)]
    for i, msgs in enumerate(REQUESTS):
        out.append(Transcript(t_ms=10 * i + 1, seq=len(out) + 1, text=f"t{i}", is_final=True))
        out.append(StartLlm(t_ms=10 * i + 2, seq=len(out) + 1, messages=msgs))
    return out


def write(store: Store) -> None:
    store.open_call("c1", started_at=T0, flow="demo")
    for e in events():
        store.append("c1", e)
    store.close_call("c1", outcome="hangup", ended_t_ms=40, turns=4)


def written(db: Path) -> Path:
    with SqliteStore(db) as store:
        write(store)
    return db


def test_the_schema_is_version_2_or_later() -> None:
    assert SCHEMA_VERSION >= 2  # 3 added the CLOSING state; StartLlm rows keep version 2's delta format


def test_start_llm_rows_hold_only_what_is_new_and_load_whole(store: Store) -> None:
    write(store)
    assert store.load("c1") == events()  # every request's whole context, rebuilt


def test_a_v2_row_is_the_delta(tmp_path: Path) -> None:
    db = written(tmp_path / "c.db")
    rows = [json.loads(d) for (d,) in raw(db, "SELECT data FROM events WHERE type = 'StartLlm' ORDER BY seq")]
    assert [(r["messages_from"], len(r["messages"])) for r in rows] == [(0, 2), (2, 2), (4, 2), (0, 2)]
    assert raw(db, "SELECT DISTINCT schema_version FROM calls") == [(SCHEMA_VERSION,)]


def test_a_version_1_log_still_loads_and_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = make_call(tmp_path, BARGE_AND_TOOL, "v2call")
    with SqliteStore(db, readonly=True) as store:
        whole = store.load_records("v2call")
    # the same call as a version-1 writer left it: whole histories in every StartLlm row
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE calls SET schema_version = 1")
        for r in whole:
            con.execute("UPDATE events SET data = ? WHERE call_id = ? AND seq = ?",
                        (json.dumps(r["data"]), "v2call", r["seq"]))
    con.close()
    assert b'"messages_from"' not in db.read_bytes()
    with SqliteStore(db, readonly=True) as store:
        assert store.load_records("v2call") == whole
    assert main(["replay", "v2call", "--db", str(db)]) == 0
    assert main(["check", "--db", str(db)]) == 0
    assert "every call reproduces" in capsys.readouterr().out


def test_check_fails_a_call_whose_rebuilt_context_differs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = make_call(tmp_path, BARGE_AND_TOOL, "c1")
    seq, data = raw(db, "SELECT seq, data FROM events WHERE type = 'StartLlm' AND "
                        "json_extract(data, '$.messages_from') > 0 ORDER BY seq DESC LIMIT 1")[0]
    bad = json.loads(data)
    bad["messages_from"] -= 1  # the rebuilt context loses one message the machine had sent
    raw(db, "UPDATE events SET data = ? WHERE call_id = 'c1' AND seq = ?", json.dumps(bad), seq)
    capsys.readouterr()
    assert main(["check", "--db", str(db)]) == 1
    assert f"call c1 seq {seq}" in capsys.readouterr().out


def test_a_delta_past_the_previous_request_is_a_store_error(tmp_path: Path) -> None:
    db = written(tmp_path / "c.db")
    raw(db, "UPDATE events SET data = json_set(data, '$.messages_from', 9) WHERE seq = 5")
    with SqliteStore(db, readonly=True) as store, pytest.raises(
            StoreError, match=r"call 'c1' seq 5: StartLlm keeps 9 messages of the previous request, which had 2"):
        store.load("c1")


def test_bytes_grow_linearly(tmp_path: Path) -> None:
    """200 turns: v2 keeps each message once; a v1 row would repeat the whole history each time."""
    history: list[Message] = [SYSTEM]
    evs: list = [CallStarted(t_ms=0, seq=1, seed=1)]
    for i in range(200):
        history += [Message(role="user", content=f"caller line {i} " * 3)]
        evs.append(StartLlm(t_ms=i + 1, seq=len(evs) + 1, messages=tuple(history)))
        history += [Message(role="assistant", content=f"agent line {i} " * 3)]
    db = tmp_path / "c.db"
    with SqliteStore(db) as store:
        store.open_call("c1", started_at=T0, flow="demo")
        for e in evs:
            store.append("c1", e)
        store.close_call("c1", outcome="hangup", ended_t_ms=300, turns=200)
        assert store.load("c1") == evs
    v2 = sum(len(d) for (d,) in raw(db, "SELECT data FROM events"))
    v1 = sum(len(json.dumps(to_record("c1", e)["data"])) for e in evs)
    assert v2 * 20 < v1  # 200 requests: the quadratic log is over 20x the linear one
