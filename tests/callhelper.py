"""Regression calls: a call exported with `engine export` is a test in one line.

    engine call my.call.yaml --db calls.db --call-id c1
    engine export c1 tests/calls/my_bug.jsonl --db calls.db

then tests/test_calls.py replays every tests/calls/*.jsonl; for expectations of your own:

    assert_call_reproduces("tests/calls/my_bug.jsonl", turns=3, max_v2v_ms=900)

Also here: the scripted calls the replay tests share (made with `engine call`, as a user would).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from callstate.cli import main
from replay import callfile
from replay.audit import check_log
from replay.turns import turns as turns_of

ROOT = Path(__file__).resolve().parent.parent
CALLS = ROOT / "tests" / "calls"


def assert_call_reproduces(path: str | Path, turns: int | None = None, max_v2v_ms: int | None = None) -> None:
    """The exported call reproduces exactly, keeps every invariant, and meets the optional expectations."""
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = ROOT / p
    call = callfile.load(p)
    violations = check_log(call.flow, call.events, call_id=call.call_id, schema_version=call.schema_version)
    assert not violations, f"{p.name}:\n" + "\n".join(str(v) for v in violations)
    ts = turns_of(call.flow, call.events)
    if turns is not None:
        assert len(ts) == turns, f"{p.name}: {len(ts)} turns, expected {turns}"
    if max_v2v_ms is not None:
        slow = [(t.index, t.voice_to_voice_ms) for t in ts
                if t.voice_to_voice_ms is not None and t.voice_to_voice_ms > max_v2v_ms]
        assert not slow, f"{p.name}: voice to voice over {max_v2v_ms} ms in (turn, ms): {slow}"


# ------------------------------------------------------------------------------------- shared calls

SHIPMENT = str(ROOT / "flows" / "shipment_status.yaml")

#: The shipment flow with a tool (canned, 1.2 s) and a caller who cuts the agent off with "Wait".
BARGE_AND_TOOL = {
    "flow": SHIPMENT,
    "seed": 1,
    "caller": [
        {"say": "Hi, is my shipment delayed?"},
        {"say": "It's 1Z 999 AA1 0123 4567 84."},
        {"say": "Wait, what day exactly?", "barge_in_after_ms": 700},
        {"say": "Okay, thanks. Bye."},
        {"hangup": True},
    ],
    "replies": [
        {"text": "Sure, I can check that for you right away. What's the tracking number please?"},
        {"tool": "lookup_shipment", "arguments": {"tracking_number": "1Z999AA10123456784"}},
        {"text": "It's running one day late, I'm afraid, and it should now arrive on Thursday by eight in "
                 "the evening at your door."},
        {"text": "Thursday the twelfth, by 8 pm."},
        {"text": "You're welcome. Goodbye!"},
    ],
    "tools": {"lookup_shipment": {"body": {"status": "delayed", "eta": "2026-03-12"}, "latency_ms": 1200}},
}

#: The built-in flow: a slow LLM (a filler each turn), a bump over the agent's reply (a false
#: interruption: the rest is resumed) and a silent caller (a reprompt).
FILLER_AND_RESUME = {
    "seed": 2,
    "latency": {"llm_first_token_ms": 1500},
    "caller": [
        {"say": "Can you tell me about my order?"},
        {"noise_ms": 400, "barge_in_after_ms": 1600},  # over the reply, after the filler
        {"say": "Thanks, that's all.", "gap_ms": 400},
        {"silence": True},
        {"hangup": True},
    ],
    "replies": [
        {"text": "Of course. Your order shipped yesterday and it should arrive tomorrow before noon, "
                 "with a text message when it is out for delivery."},
        {"text": "You're welcome, have a good day."},
    ],
}


def make_call(tmp_path: Path, script: dict, call_id: str, db: Path | None = None) -> Path:
    """Run ``script`` with `engine call` into ``db`` (default tmp_path/calls.db); returns the db."""
    db = db or tmp_path / "calls.db"
    path = tmp_path / f"{call_id}.call.yaml"
    path.write_text(yaml.safe_dump(script, sort_keys=False))
    code = main(["call", str(path), "--db", str(db), "--call-id", call_id])
    assert code == 0, f"engine call {path} failed"
    return db


#: The exported regression calls, and the scripts they were made from (`python -m tests.callhelper` makes
#: them again, with `engine call` then `engine export`, after a deliberate change of the machine).
FIXTURES = {"barge_in_and_tool": BARGE_AND_TOOL, "filler_false_interruption": FILLER_AND_RESUME}


def export_fixtures() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name, script in FIXTURES.items():
            db = make_call(Path(tmp), script, name)
            assert main(["export", name, str(CALLS / f"{name}.jsonl"), "--db", str(db)]) == 0


if __name__ == "__main__":
    export_fixtures()
