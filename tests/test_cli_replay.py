"""`engine replay` on good, edited, corrupted and truncated logs: clear verdicts, never a traceback,
and the log file is never modified by reading it."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from callstate.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "calls.db"
    assert main(["call", str(ROOT / "scripts/barge_in.call.yaml"), "--db", str(path), "--call-id", "c1"]) == 0
    capsys.readouterr()
    return path


def sql(path: Path, query: str, *args: object) -> list[tuple]:
    con = sqlite3.connect(path)
    with con:
        rows = con.execute(query, args).fetchall()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return rows


def digest(path: Path) -> str:
    sql(path, "SELECT 1")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def replay(db: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["replay", "c1", "--db", str(db)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_replay_reproduces_and_leaves_the_log_untouched(db: Path, capsys) -> None:
    before = digest(db)
    code, out, _ = replay(db, capsys)
    assert code == 0 and "reproduced" in out and "every effect identical" in out
    assert digest(db) == before


def test_an_edited_effect_is_shown_as_the_first_divergence(db: Path, capsys) -> None:
    seq, data = sql(db, "SELECT seq, data FROM events WHERE call_id='c1' AND type='Speak' ORDER BY seq LIMIT 1")[0]
    edited = {**json.loads(data), "text": "Something else entirely."}
    sql(db, "UPDATE events SET data=? WHERE call_id='c1' AND seq=?", json.dumps(edited), seq)
    code, out, _ = replay(db, capsys)
    assert code == 1
    assert f"diverged at seq {seq}" in out
    assert 'data.text: "Something else entirely." != ' in out


def test_corrupted_json_names_the_call_and_seq(db: Path, capsys) -> None:
    sql(db, "UPDATE events SET data='{not json' WHERE call_id='c1' AND seq=7")
    code, _, err = replay(db, capsys)
    assert code == 1 and "'c1' seq 7" in err and "Traceback" not in err


def test_a_missing_event_names_the_gap(db: Path, capsys) -> None:
    sql(db, "DELETE FROM events WHERE call_id='c1' AND seq=12")
    code, _, err = replay(db, capsys)
    assert code == 1 and "seq 12 is missing" in err


def test_a_truncated_call_is_reported(db: Path, capsys) -> None:
    last = sql(db, "SELECT max(seq) FROM events WHERE call_id='c1'")[0][0]
    sql(db, "DELETE FROM events WHERE call_id='c1' AND seq=?", last)
    code, _, err = replay(db, capsys)
    assert code == 1 and "truncated" in err


def test_a_newer_schema_version_is_refused(db: Path, capsys) -> None:
    sql(db, "UPDATE calls SET schema_version=99")
    code, _, err = replay(db, capsys)
    assert code == 1 and "99" in err and "Traceback" not in err


def test_not_a_database(tmp_path: Path, capsys) -> None:
    bogus = tmp_path / "x.db"
    bogus.write_text("hello")
    code = main(["replay", "c1", "--db", str(bogus)])
    assert code == 1 and "not a SQLite database" in capsys.readouterr().err


def test_calls_lists_the_call(db: Path, capsys) -> None:
    assert main(["calls", "--db", str(db)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("c1"))
    assert "caller_hung_up" in line and line.split()[-2] == "2"  # two caller turns answered
