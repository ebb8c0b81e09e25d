"""What-if replay: the caller keeps their times, the agent's answers keep their latency from their cause, and
nothing the log does not hold is invented."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from callstate.cli import main
from callstate.logs import load_call
from engine import events as ev
from engine.playback import MS_PER_CHAR
from replay.overrides import OverrideError, apply_sets
from replay.turns import turns
from replay.whatif import CALLER_SIDE, what_if
from sim.offline import OfflineCall
from tests.callhelper import BARGE_AND_TOOL, FILLER_AND_RESUME, SHIPMENT, make_call
from tests.test_properties import calls

PUNCT = "turn_taking.endpointing.on_punctuation_ms"


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("whatif")
    make_call(tmp, BARGE_AND_TOOL, "c1")
    return make_call(tmp, FILLER_AND_RESUME, "c2", db=tmp / "calls.db")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(calls())
def test_a_what_if_that_changes_nothing_is_the_logged_call(call) -> None:  # type: ignore[no-untyped-def]
    flow, script = call
    log = asyncio.run(OfflineCall(flow, script).run()).log
    result = what_if(flow, log)
    assert result.notes == [] and result.stopped is None and result.estimated == []
    assert result.log == log


def test_later_endpointing_starts_the_turn_later_and_keeps_the_caller_times(db: Path) -> None:
    call = load_call(str(db), "c1")
    flow = apply_sets(call.flow, [f"{PUNCT}=600"])
    result = what_if(flow, call.events)
    assert result.stopped is None and result.notes == []
    before, after = turns(call.flow, call.events), turns(flow, result.log)
    assert len(before) == len(after) == 4
    # turn 1 ("...delayed?") ends a sentence: it is taken later (by up to the 400 ms added); turn 2 ends
    # in digits (on_number_ms): unchanged
    assert 0 < after[0].t_ms - before[0].t_ms <= 400
    assert after[1].t_ms == before[1].t_ms
    assert after[0].voice_to_voice_ms >= before[0].voice_to_voice_ms  # type: ignore[operator]
    caller = [(type(e).__name__, e.t_ms) for e in call.events if isinstance(e, CALLER_SIDE)]
    again = [(type(e).__name__, e.t_ms) for e in result.log if isinstance(e, CALLER_SIDE)]
    assert again == caller


def test_agent_answers_keep_their_latency_from_their_cause(db: Path) -> None:
    call = load_call(str(db), "c1")
    flow = apply_sets(call.flow, [f"{PUNCT}=600"])
    result = what_if(flow, call.events)

    def offsets(log: list[ev.Event]) -> list[tuple[str, int]]:
        by_seq = {e.seq: e for e in log}
        return [(type(e).__name__, e.t_ms - by_seq[e.cause].t_ms) for e in log
                if isinstance(e, ev.LlmToken | ev.LlmDone | ev.TtsAudio | ev.TtsDone | ev.ToolResult)
                and e.cause in by_seq]

    assert sorted(offsets(result.log)) == sorted(offsets(call.events))
    fired = [(e, {x.seq: x for x in result.log}[e.cause]) for e in result.log if isinstance(e, ev.TimerFired)]
    assert fired and all(e.t_ms == timer.at_ms for e, timer in fired)  # type: ignore[attr-defined]


def test_a_request_the_log_cannot_answer_stops_the_what_if_with_a_note(db: Path) -> None:
    call = load_call(str(db), "c1")
    flow = apply_sets(call.flow, ["system=You are a pirate. Answer in rhymes."])
    result = what_if(flow, call.events)
    assert result.stopped is not None and result.stopped.startswith("turn 1: needs an LLM answer the log does not have")
    assert not any(isinstance(e, ev.LlmToken) for e in result.log)  # no answer was made up
    assert result.log[-1].t_ms <= (result.stopped_at or 0)


def test_a_line_never_synthesized_is_estimated_from_its_text(db: Path) -> None:
    call = load_call(str(db), "c1")
    flow = apply_sets(call.flow, ["turn_taking.filler.after_ms=150"])  # fillers where the log had none
    result = what_if(flow, call.events)
    fillers = [e for e in result.log if isinstance(e, ev.Speak) and e.purpose == "filler"]
    assert fillers and set(result.estimated) >= {fillers[0].seq}
    audio = sum(e.duration_ms for e in result.log if isinstance(e, ev.TtsAudio) and e.cause == fillers[0].seq)
    assert audio == len(fillers[0].text) * MS_PER_CHAR
    assert any("estimated from its text" in n for n in result.notes)


def test_cli_prints_original_and_what_if_side_by_side(db: Path, capsys) -> None:
    assert main(["replay", "c1", "--db", str(db), "--set", f"{PUNCT}=600"]) == 0
    out = capsys.readouterr().out
    assert f"what-if: {PUNCT}=600" in out
    assert re.search(r"turn taken 5\.\d\ds\s+\|\s+turn taken 5\.\d\ds \(\+\d+ ms\)", out)
    assert "turn 2  (unchanged)" in out
    assert re.search(r"barge-ins 1\s+\| barge-ins 1", out)
    assert re.search(r"voice to voice \d+ ms \(\+\d+ ms\)", out)


def test_cli_what_if_with_several_sets_and_a_flow_file(db: Path, capsys) -> None:
    code = main(["replay", "c1", "--db", str(db), "--flow", SHIPMENT, "--set", "turn_taking.barge_in.min_words=2",
                 "--set", f"{PUNCT}=300", "--timeline"])
    out = capsys.readouterr().out
    assert code == 0 and "--flow" in out and "min_words=2" in out and "── turn 1 at" in out


def test_a_false_interruption_call_replays_the_same_with_a_longer_wait(db: Path) -> None:
    call = load_call(str(db), "c2")
    flow = apply_sets(call.flow, ["turn_taking.barge_in.false_interruption_ms=3000"])
    result = what_if(flow, call.events)
    resumes = [e for e in result.log if isinstance(e, ev.Speak) and e.purpose == "resume"]
    logged = [e for e in call.events if isinstance(e, ev.Speak) and e.purpose == "resume"]
    assert len(resumes) == len(logged) == 1 and resumes[0].t_ms - logged[0].t_ms == 1000


def test_bad_set_path_lists_the_valid_keys(db: Path, capsys) -> None:
    assert main(["replay", "c1", "--db", str(db), "--set", "turn_taking.barge_in.min_word=2"]) == 2
    err = capsys.readouterr().err
    assert "turn_taking.barge_in has no key 'min_word'" in err and "min_words" in err and "min_speech_ms" in err


@pytest.mark.parametrize(("item", "message"), [
    ("turn_taking.barge_in.min_words=two", "turn_taking.barge_in.min_words"),
    ("turn_taking", "expected PATH=VALUE"),
    ("nope=1", "the flow has no key 'nope'"),
    ("turn_taking.max_call_ms.x=1", "is a value"),
])
def test_bad_sets_are_clear_errors(item: str, message: str, db: Path) -> None:
    call = load_call(str(db), "c1")
    with pytest.raises(OverrideError, match=re.escape(message)):
        apply_sets(call.flow, [item])
