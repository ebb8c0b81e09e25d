"""Live calls end to end: the serve app, the real runtime, the offline providers, and simulated phones
speaking Twilio's Media Streams protocol over loopback (real time: these tests take seconds each)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from adapters.audio import load_fixture
from callstate.flows import load_flow
from callstate.providers import build_providers
from callstate.server import Server, start
from callstate.simcaller import CallerLine, SimCaller
from engine import events as ev
from engine.flow import Flow
from logstore.sqlite import SqliteStore
from replay import invariants
from replay.reproduce import reproduce
from replay.turns import steps

ROOT = Path(__file__).resolve().parent.parent
LOCAL_FLOW = ROOT / "tests/data/local_call.yaml"


def line(name: str, **kw: object) -> CallerLine:
    return CallerLine(audio=load_fixture(name), **{"gap_ms": 300, **kw})  # type: ignore[arg-type]


async def run_calls(flow: Flow, db: Path, callers: list[tuple[list[CallerLine], dict[str, str]]]) -> list:
    store = SqliteStore(str(db))
    server = Server(flow, build_providers(flow, {}), store, skip_signature=True)
    runner, port = await start(server)
    try:
        results = await asyncio.gather(*[
            SimCaller(f"ws://127.0.0.1:{port}/media", lines=lines, params=params, call_index=i + 1).run()
            for i, (lines, params) in enumerate(callers)])
        for _ in range(200):  # each call task flushes and closes its log after the stream ends
            if not server.calls:
                break
            await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
        store.close()
    return results


def load_all(db: Path) -> dict[str, list[ev.Event]]:
    store = SqliteStore(str(db), readonly=True)
    try:
        return {row.call_id: store.load(row.call_id) for row in store.list_calls()}
    finally:
        store.close()


def check(flow: Flow, log: list[ev.Event]) -> None:
    assert reproduce(flow, log).ok
    assert invariants.check(steps(flow, log), flow) == []


def test_a_whole_call_with_a_barge_in(tmp_path: Path) -> None:
    flow = load_flow(LOCAL_FLOW)
    callers = [([line("shipment_1"), line("shipment_2"), line("shipment_3", barge_in_after_ms=1500),
                 line("shipment_4")], {})]
    (result,) = asyncio.run(run_calls(flow, tmp_path / "c.db", callers))
    ((_call_id, log),) = load_all(tmp_path / "c.db").items()
    check(flow, log)
    responds = [e.caller for e in log if isinstance(e, ev.Respond)]
    assert responds == flow.local.caller  # each utterance, cut by the VAD, got its scripted transcript
    assert isinstance(log[-1], ev.Input | ev.Effect) and any(isinstance(e, ev.CallEnded) for e in log)
    # the barge-in: the phone was told to clear, in the same step that cancelled the reply's synthesis
    clear_step = next(st for st in steps(flow, log) if any(isinstance(x, ev.ClearPlayback) for x in st.effects))
    assert result.clears >= 1 and clear_step.after in ("interrupted", "listening")
    # marks drive what the LLM is told was said: the cut reply is in the context only as far as it was heard
    full = flow.local.replies[1].text
    after = next(e for e in log if isinstance(e, ev.StartLlm) and e.seq > clear_step.event.seq)
    said = [m.content for m in after.messages if m.role == "assistant"]
    assert said[-1] != full and full.startswith(said[-1].rstrip("."))
    assert result.marks_echoed and result.lines[0].voice_to_voice_ms is not None


def test_twenty_concurrent_calls_stay_independent(tmp_path: Path) -> None:
    flow = load_flow(LOCAL_FLOW)
    callers = [([line("shipment_1"), line("shipment_4")], {"script": json.dumps([f"caller {i} here.", "Bye."])})
               for i in range(20)]
    results = asyncio.run(run_calls(flow, tmp_path / "c.db", callers))
    logs = load_all(tmp_path / "c.db")
    assert len(logs) == 20 and all(not r.timed_out for r in results)
    seen = set()
    for log in logs.values():
        check(flow, log)
        responds = [e.caller for e in log if isinstance(e, ev.Respond)]
        assert responds[1:] == ["Bye."] and re.fullmatch(r"caller \d+ here\.", responds[0])
        seen.add(responds[0])
    assert len(seen) == 20  # every call heard its own caller, none another's


def test_dtmf_routes_a_live_call(tmp_path: Path) -> None:
    data = load_flow(LOCAL_FLOW).model_dump()
    data.update(start_node="menu", nodes={
        "menu": {"instructions": "Menu.", "say": "Press 1 for billing.", "on_dtmf": {"1": "billing"}},
        "billing": {"instructions": "Billing.", "say": "Billing here."}})
    flow = Flow.model_validate(data)
    callers = [([CallerLine(dtmf="1", gap_ms=300), line("shipment_4")], {})]
    asyncio.run(run_calls(flow, tmp_path / "c.db", callers))
    ((_, log),) = load_all(tmp_path / "c.db").items()
    check(flow, log)
    assert [e.node for e in log if isinstance(e, ev.EnterNode)] == ["menu", "billing"]
    assert any(isinstance(e, ev.Speak) and e.text == "Billing here." for e in log)


# ------------------------------------------------------------------------- the process: SIGTERM, kill -9

def serve(db: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    log = db.with_suffix(f".{time.monotonic_ns()}.log")
    with log.open("w") as err:  # a file, not a pipe: nobody reads a pipe mid-call, and a full one blocks
        proc = subprocess.Popen(
            [sys.executable, "-m", "callstate.cli", "serve", "--flow", str(LOCAL_FLOW), "--port", "0",
             "--db", str(db), "--insecure-skip-signature", *extra],
            stderr=err, text=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = re.search(r"on http://127\.0\.0\.1:(\d+)", log.read_text())
        if m:
            return proc, int(m.group(1))
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"engine serve did not start:\n{log.read_text()}")


async def call_until(port: int, seconds: float) -> None:
    caller = SimCaller(f"ws://127.0.0.1:{port}/media", lines=[line("shipment_1"), line("shipment_2")],
                       timeout_s=seconds)
    await caller.run()


def test_sigterm_mid_call_loses_no_event(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    proc, port = serve(db, "--grace-s", "0.5")

    async def scenario() -> None:
        task = asyncio.create_task(call_until(port, 30))
        await asyncio.sleep(7)  # mid-call: the first turn is over, the second is being said
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(task, 20)

    asyncio.run(scenario())
    assert proc.wait(20) == 0
    ((_call_id, log),) = load_all(db).items()
    flow = load_flow(LOCAL_FLOW)
    check(flow, log)
    ended = [e for e in log if isinstance(e, ev.CallEnded | ev.RuntimeFault)]
    assert ended and (ended[-1].reason in ("stop", "ws_closed_without_stop")
                      or (isinstance(ended[-1], ev.RuntimeFault) and ended[-1].reason == "shutdown"))
    if isinstance(ended[-1], ev.RuntimeFault):  # the server hung up: on the record, as the machine's effect
        assert [e.reason for e in log if isinstance(e, ev.Hangup)][-1:] == ["shutdown"]
    store = SqliteStore(str(db), readonly=True)
    assert store.list_calls()[0].status == "ended"
    store.close()


def test_kill_9_keeps_every_flushed_turn_and_marks_the_call_abandoned(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    proc, port = serve(db, "--lease-s", "1")

    async def scenario() -> None:
        task = asyncio.create_task(call_until(port, 30))
        await asyncio.sleep(7)
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(task, 20)

    asyncio.run(scenario())
    proc.wait(10)
    again, _ = serve(db, "--lease-s", "1")  # a live server ends what the crash left open once its lease lapses

    def status() -> str:
        with SqliteStore(str(db), readonly=True) as s:
            return s.list_calls()[0].status
    deadline = time.monotonic() + 20
    while status() == "open" and time.monotonic() < deadline:
        time.sleep(0.05)  # another process's sweep: polled, bounded
    again.send_signal(signal.SIGTERM)
    assert again.wait(20) == 0
    store = SqliteStore(str(db), readonly=True)
    (row,) = store.list_calls()
    log = store.load(row.call_id)
    store.close()
    assert row.status == "abandoned"
    flow = load_flow(LOCAL_FLOW)
    assert reproduce(flow, log).ok  # what was flushed is a whole prefix of the call
    assert [e.caller for e in log if isinstance(e, ev.Respond)][:1] == [flow.local.caller[0]]
    assert any(isinstance(e, ev.SendAudio) for e in log)  # the first turn's answer, flushed at its boundary


def test_a_timer_run_early_by_the_loop_is_stamped_at_its_due_time_and_stamps_never_go_back() -> None:
    """uvloop's clock is whole milliseconds held in floats: a timer due at 700 runs when the loop's time minus
    the call's start is 0.69999.. s (the soak's "filler 699 ms into the turn"). The record must say 700, and
    nothing after it may say less."""
    from engine.runtime import LiveCall
    from logstore.memory import MemoryStore

    class Phone:
        async def send_audio(self, b: bytes) -> None: ...
        async def send_mark(self, n: str) -> None: ...
        async def clear(self) -> None: ...
        async def hangup(self) -> None: ...
        async def transfer(self, to: str) -> None: ...

    async def scenario() -> list[ev.Input]:
        flow = load_flow(LOCAL_FLOW)
        store = MemoryStore()
        store.open_call("c", started_at="2026-12-02T12:00:00+00:00", flow=flow.name)
        call = LiveCall(call_id="c", flow=flow, providers=build_providers(flow, {}), phone=Phone(), store=store,
                        seed=1, params={})
        call.main.cancel()  # only the stamping is under test: nothing consumes the inbox
        class Loop:  # the values the soak met: (854772.304 - 854771.604) * 1000 = 699.99999..
            def time(self) -> float:
                return 854772.304

        call.loop, call.t0 = Loop(), 854771.604  # type: ignore[assignment]
        call._timer_fired(ev.SetTimer(t_ms=0, seq=9, name="filler", at_ms=700))
        call.emit(ev.Dtmf(t_ms=0, digit="1"))
        out = []
        while not call.inbox.empty():
            out.append(call.inbox.get_nowait()[0])
        return out

    _started, fired, dtmf = asyncio.run(scenario())
    assert isinstance(fired, ev.TimerFired) and fired.t_ms == 700 and dtmf.t_ms == 700
