"""engine/machine.py's two tables and one handler map: rows, the caller's floor, closing, runtime faults."""

from __future__ import annotations

import dataclasses

from engine import events as ev
from engine.machine import AGENT_TABLE, FLOOR_TABLE, HANDLERS, TIMERS, CallMachine, run_inputs
from engine.states import CallState, Floor
from replay.reproduce import reproduce
from tests.helpers import QUIET_FLOW, MachineDriver, flow, types
from tests.test_machine import speaking_call


def _states(row: dict[str, object]) -> list[object]:
    source = row["source"]
    return [*(source if isinstance(source, list) else [source]), row["dest"]]


def test_every_row_names_members_of_its_half_and_every_input_has_one_handler() -> None:
    assert all(isinstance(s, CallState) for row in AGENT_TABLE for s in _states(row))
    assert all(isinstance(s, Floor) for row in FLOOR_TABLE for s in _states(row))
    inputs = {cls for cls in ev.REGISTRY.values() if issubclass(cls, ev.Input)}
    assert set(HANDLERS) == inputs
    assert set(TIMERS) == {"max_call", "endpoint", "barge_in", "false_interruption", "filler", "idle",
                           "tool_delay", "fault"}


def test_one_word_over_the_speaking_agent_is_a_barge_in() -> None:
    """The newcomer's question: a Transcript while the agent speaks and the caller has said one word.
    Floor: talking over the agent is CANDIDATE; the transcript handler adds the word to the candidate and
    tries the agent's barge_in row, whose guard (policy.barge_in_confirmed) passes at min_words=1."""
    c, _ = speaking_call()
    c.feed(ev.SpeechStarted(t_ms=2600))
    assert (c.state, c.m.view.floor) == (CallState.SPEAKING, Floor.CANDIDATE)
    effects = c.feed(ev.Transcript(t_ms=2700, text="Tuesday", is_final=False))
    assert types(effects)[:2] == ["ClearPlayback", "CancelTts"]  # the caller stops hearing the agent first
    assert c.m.view.fired == ("barge_in", "confirmed", "caller_resumes")
    assert (c.state, c.m.view.floor) == (CallState.LISTENING, Floor.TALKING)


def test_a_cough_over_the_agent_is_a_candidate_dropped_when_it_stops() -> None:
    c, _ = speaking_call()
    c.feed(ev.SpeechStarted(t_ms=2600))
    effects = c.feed(ev.SpeechStopped(t_ms=2700, end_ms=2700))
    assert (c.state, c.m.view.floor) == (CallState.SPEAKING, Floor.SILENT)
    assert [(type(e).__name__, getattr(e, "name", None)) for e in effects][:1] == [("CancelTimer", "barge_in")]
    assert not any(isinstance(e, ev.ClearPlayback) for e in effects)


def test_words_the_vad_missed_are_a_quiet_candidate_and_an_uh_huh_never_confirms() -> None:
    c, _ = speaking_call()
    effects = c.feed(ev.Transcript(t_ms=2700, text="uh-huh", is_final=True))
    assert (c.state, c.m.view.floor) == (CallState.SPEAKING, Floor.QUIET_CANDIDATE)
    assert [e.reason for e in effects if isinstance(e, ev.Ignored)] == ["acknowledgement"]
    c.feed(ev.SpeechStarted(t_ms=2800))  # now the VAD hears them too
    assert c.m.view.floor == Floor.CANDIDATE


def test_the_last_line_plays_in_closing_and_nothing_interrupts_it() -> None:
    c = MachineDriver(flow(turn_taking={"idle": {"max_reprompts": 0}}))
    c.fire("idle")
    goodbye = c.last(ev.Speak)
    assert (goodbye.purpose, c.state) == ("goodbye", CallState.CLOSING)
    effects = c.feed(ev.Transcript(t_ms=9000, text="wait, one more thing", is_final=True))
    assert effects == [ev.Ignored(t_ms=9000, seq=effects[0].seq, cause=effects[0].seq - 1, event="Transcript",
                                  state="closing", reason="transcript_while_closing")]
    c.feed(ev.SpeechStarted(t_ms=9100))
    assert c.m.view.floor == Floor.TALKING  # no candidate: closing is not interruptible
    c.feed(ev.SpeechStopped(t_ms=9300))
    c.play(goodbye, 9400)
    assert c.last(ev.Hangup).reason == "idle" and c.state == CallState.ENDED


def test_a_runtime_fault_speaks_the_fallback_line_then_hangs_up_on_the_record() -> None:
    c = MachineDriver()
    effects = c.feed(ev.RuntimeFault(t_ms=500, reason="error"))
    speak = next(e for e in effects if isinstance(e, ev.Speak))
    assert (speak.text, speak.purpose) == (QUIET_FLOW.fallback.llm, "fallback")
    assert c.state == CallState.CLOSING and "fault" in c.m.view.timers
    c.play(speak, 600)
    assert c.last(ev.Hangup) == ev.Hangup(t_ms=c.last(ev.Hangup).t_ms, seq=c.last(ev.Hangup).seq, reason="error")
    assert c.state == CallState.ENDED


def test_a_fallback_line_that_never_plays_is_cut_by_the_fault_deadline() -> None:
    c = MachineDriver()
    c.feed(ev.RuntimeFault(t_ms=500))
    effects = c.fire("fault")
    assert types(effects)[-1] == "Hangup" and c.last(ev.Hangup).reason == "error"
    assert c.state == CallState.ENDED


def test_a_shutdown_hangs_up_at_once_and_ends_the_call() -> None:
    c, _ = speaking_call()
    effects = c.feed(ev.RuntimeFault(t_ms=3000, reason="shutdown"))
    assert types(effects)[-1] == "Hangup" and c.last(ev.Hangup).reason == "shutdown"
    assert "Speak" not in types(effects) and c.state == CallState.ENDED


def test_a_version_1_log_still_reproduces() -> None:
    """Version 1 had no CLOSING state: an Ignored during the goodbye said "speaking"."""
    f = flow(turn_taking={"idle": {"max_reprompts": 0}})
    inputs: list[ev.Input] = [ev.CallStarted(t_ms=0), ev.TimerFired(t_ms=8000, cause=3, name="idle"),
                              ev.Transcript(t_ms=8100, text="hello?", is_final=True), ev.CallEnded(t_ms=8200)]
    log = run_inputs(f, inputs)
    v1 = [dataclasses.replace(e, state=CallState.SPEAKING.value)
          if isinstance(e, ev.Ignored) and e.state == CallState.CLOSING else e for e in log]
    assert v1 != log
    assert reproduce(f, v1, schema_version=1).ok
    assert not reproduce(f, v1).ok  # read as the current version, it would be a divergence
    assert CallMachine(f).view.state == CallState.LISTENING
