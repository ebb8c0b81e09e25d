"""`engine check`: every logged call reproduced and checked against the invariants; a hand-broken log fails,
naming the call and the seq."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from callstate.cli import main
from engine import events as ev
from engine.flow import DEFAULT_FLOW, Flow
from engine.machine import run_inputs
from replay import invariants
from replay.audit import check_log
from replay.invariants import Violation
from replay.turns import Step
from tests.callhelper import BARGE_AND_TOOL, FILLER_AND_RESUME, make_call


@pytest.fixture
def db(tmp_path: Path) -> Path:
    make_call(tmp_path, BARGE_AND_TOOL, "c1")
    return make_call(tmp_path, FILLER_AND_RESUME, "c2", db=tmp_path / "calls.db")


def sql(path: Path, query: str, *args: object) -> list[tuple]:  # type: ignore[type-arg]
    con = sqlite3.connect(path)
    with con:
        rows = con.execute(query, args).fetchall()
    con.close()
    return rows


def check(db: Path, capsys, *extra: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    code = main(["check", "--db", str(db), *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_clean_calls_pass(db: Path, capsys) -> None:
    code, out = check(db, capsys)
    assert code == 0 and "checked 2 calls: every call reproduces and keeps every invariant" in out


def test_a_hand_edited_effect_fails_naming_the_call_and_the_seq(db: Path, capsys) -> None:
    seq, data = sql(db, "SELECT seq, data FROM events WHERE call_id='c2' AND type='Speak' AND "
                        "json_extract(data, '$.purpose')='filler' ORDER BY seq LIMIT 1")[0]
    sql(db, "UPDATE events SET data=? WHERE call_id='c2' AND seq=?",
        json.dumps({**json.loads(data), "text": "Hmm."}), seq)
    code, out = check(db, capsys)
    assert code == 1
    assert f"call c2 seq {seq}: reproduces: diverged at seq {seq}" in out
    assert 'data.text: "Hmm." != "One moment."' in out
    assert "call c1" not in out  # the other call is fine
    assert "1 with violations" in out


def test_an_edited_timer_is_found_too(db: Path, capsys) -> None:
    seq, data = sql(db, "SELECT seq, data FROM events WHERE call_id='c1' AND type='SetTimer' AND "
                        "json_extract(data, '$.name')='endpoint' ORDER BY seq LIMIT 1")[0]
    sql(db, "UPDATE events SET data=? WHERE call_id='c1' AND seq=?",
        json.dumps({**json.loads(data), "at_ms": json.loads(data)["at_ms"] + 1}), seq)
    code, out = check(db, capsys, "c1")
    assert code == 1 and f"call c1 seq {seq}: reproduces" in out


def test_an_unreadable_log_names_the_call_and_seq(db: Path, capsys) -> None:
    sql(db, "UPDATE events SET data='{oops' WHERE call_id='c1' AND seq=7")
    code, out = check(db, capsys)
    assert code == 1 and "call c1: cannot be read" in out and "seq 7" in out


def test_unknown_call_id_is_an_error(db: Path, capsys) -> None:
    code, out = check(db, capsys, "nope")
    assert code == 1 and "no call 'nope'" in out


def test_each_invariant_violation_is_printed_with_its_call_and_seq(db: Path, capsys, monkeypatch) -> None:
    # the machine keeps every invariant, so stand in a rule it breaks: "no filler, ever"
    def no_fillers(steps: list[Step], flow: Flow) -> list[Violation]:
        return [Violation("no_fillers", x.seq, "a filler") for st in steps for x in st.effects
                if isinstance(x, ev.Speak) and x.purpose == "filler"]

    monkeypatch.setattr(invariants, "INVARIANTS", (*invariants.INVARIANTS, no_fillers))
    fillers = [s for (s,) in sql(db, "SELECT seq FROM events WHERE call_id='c2' AND type='Speak' AND "
                                     "json_extract(data, '$.purpose')='filler' ORDER BY seq")]
    code, out = check(db, capsys)
    assert code == 1 and len(fillers) == 2
    assert [line for line in out.splitlines() if "no_fillers" in line] == [
        f"call c2 seq {seq}: no_fillers: a filler" for seq in fillers]


def test_check_log_stops_the_invariants_at_the_divergence() -> None:
    flow = DEFAULT_FLOW.model_copy(update={"greeting": None})
    log = run_inputs(flow, [ev.CallStarted(t_ms=0), ev.Transcript(t_ms=100, text="Hello.", is_final=True),
                            ev.CallEnded(t_ms=200)])
    assert check_log(flow, log) == []
    broken = [e for e in log if not isinstance(e, ev.CancelLlm)]  # as if the log had lost the cancel
    found = check_log(flow, broken)
    assert [v.rule for v in found] == ["reproduces"]
