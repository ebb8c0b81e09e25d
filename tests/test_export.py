"""`engine export`: a logged call as one JSON Lines file, which tests/callhelper.py turns into a test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from callstate.cli import main
from callstate.logs import load_call
from engine import codec
from replay import callfile
from tests.callhelper import BARGE_AND_TOOL, assert_call_reproduces, make_call


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("export")
    db = make_call(tmp, BARGE_AND_TOOL, "c1")
    out = tmp / "calls" / "barge.jsonl"
    assert main(["export", "c1", str(out), "--db", str(db)]) == 0
    return db, out


def test_first_line_is_the_flow_then_one_event_a_line(exported: tuple[Path, Path]) -> None:
    db, out = exported
    call = load_call(str(db), "c1")
    lines = out.read_text().splitlines()
    head = json.loads(lines[0])
    assert head["flow"] == call.flow.model_dump(mode="json")
    assert [codec.loads(line) for line in lines[1:]] == call.events
    assert lines[1:] == [codec.dumps("c1", e) for e in call.events]


def test_an_exported_call_is_a_regression_test(exported: tuple[Path, Path]) -> None:
    _, out = exported
    assert_call_reproduces(out, turns=4, max_v2v_ms=2500)
    with pytest.raises(AssertionError, match="4 turns, expected 3"):
        assert_call_reproduces(out, turns=3)
    with pytest.raises(AssertionError, match="voice to voice over 1000 ms"):
        assert_call_reproduces(out, max_v2v_ms=1000)


def test_an_edited_export_fails_naming_the_seq(exported: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = exported
    lines = out.read_text().splitlines()
    n, record = next((i, json.loads(line)) for i, line in enumerate(lines) if '"type":"Speak"' in line and i > 5)
    record["data"]["text"] = "Something else."
    lines[n] = json.dumps(record)
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join(lines) + "\n")
    with pytest.raises(AssertionError, match=f"reproduces at seq {record['seq']}"):
        assert_call_reproduces(edited)


def test_a_file_that_is_not_an_export_is_named_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"flow": {"name": "x"}}\n{"not": "an event"}\n')
    with pytest.raises(callfile.CallFileError, match=r"bad.jsonl:2:"):
        callfile.load(bad)
    bad.write_text("[1, 2]\n")
    with pytest.raises(callfile.CallFileError, match=r"bad.jsonl:1:"):
        callfile.load(bad)


def test_export_of_an_unknown_call_fails(exported: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    db, _ = exported
    assert main(["export", "nope", str(tmp_path / "x.jsonl"), "--db", str(db)]) == 1
    assert "no call 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
