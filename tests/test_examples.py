"""The example flows run end to end in `engine call` (offline driver) and end the way they should."""

from __future__ import annotations

from pathlib import Path

import pytest

from callstate.cli import main
from engine import events as ev
from logstore.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent


def run(script: str, tmp_path: Path) -> list[ev.Event]:
    db = str(tmp_path / "calls.db")
    assert main(["call", str(ROOT / "scripts" / script), "--db", db, "--call-id", "x"]) == 0
    assert main(["replay", "x", "--db", db]) == 0
    store = SqliteStore(db, readonly=True)
    try:
        return store.load("x")
    finally:
        store.close()


def nodes(log: list[ev.Event]) -> list[str]:
    return [e.node for e in log if isinstance(e, ev.EnterNode)]


def test_appointment_checks_confirms_books_and_ends(tmp_path: Path) -> None:
    log = run("appointment.call.yaml", tmp_path)
    assert nodes(log) == ["collect_date", "confirm", "done"]
    assert [e.name for e in log if isinstance(e, ev.CallTool)] == ["check_availability", "book_appointment"]
    assert any(isinstance(e, ev.Speak) and e.text == "Let me look at the calendar." for e in log)  # 1100 > 800
    assert isinstance(next(e for e in reversed(log) if isinstance(e, ev.Effect)), ev.Hangup | ev.CancelTimer)
    assert [e.reason for e in log if isinstance(e, ev.Hangup)] == ["flow_end"]


def test_support_line_routes_speech_with_goto_and_ends(tmp_path: Path) -> None:
    log = run("support_line.call.yaml", tmp_path)
    assert nodes(log) == ["menu", "tech", "wrap_up"]
    assert any(isinstance(e, ev.Hangup) for e in log)
    tech = next(e for e in log if isinstance(e, ev.StartLlm) and "Troubleshoot" in (e.messages[0].content or ""))
    assert "goto" in [t.name for t in tech.tools]


def test_support_line_keypad_zero_transfers_to_an_operator(tmp_path: Path) -> None:
    log = run("support_line_operator.call.yaml", tmp_path)
    assert nodes(log) == ["menu", "operator"]
    assert [e.to for e in log if isinstance(e, ev.Transfer)] == ["+15550100"]
    assert [e.caller for e in log if isinstance(e, ev.Respond)] == ["[pressed 0]"]


@pytest.mark.parametrize("flow", sorted(p.name for p in (ROOT / "flows").glob("*.yaml")))
def test_every_example_flow_validates(flow: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(ROOT / "flows" / flow)]) == 0
