"""engine/runtime.py: a failure in a call's own code, and a shutdown, end the call on the record."""

from __future__ import annotations

import asyncio
from pathlib import Path

from callstate.flows import load_flow
from callstate.providers import build_providers
from engine import events as ev
from engine.runtime import LiveCall
from logstore.memory import MemoryStore
from replay.reproduce import reproduce

LOCAL_FLOW = Path(__file__).resolve().parent / "data" / "local_call.yaml"


class Phone:
    """Twilio's side, played at once: every mark is echoed as soon as it is sent."""

    def __init__(self) -> None:
        self.call: LiveCall | None = None
        self.audio = 0
        self.hung_up = asyncio.Event()

    async def send_audio(self, mulaw: bytes) -> None:
        self.audio += len(mulaw)

    async def send_mark(self, name: str) -> None:
        assert self.call is not None
        self.call.emit(ev.PlaybackMark(t_ms=0, name=name))

    async def clear(self) -> None:
        pass

    async def hangup(self) -> None:
        self.hung_up.set()
        assert self.call is not None
        self.call.emit(ev.CallEnded(t_ms=0, reason="hangup"))  # Twilio's stop follows a REST hang-up

    async def transfer(self, to: str) -> None:
        pass


class Bug:
    """An on_step hook (the server's metrics, say) that fails once, at the step that sends the first audio."""

    def __init__(self) -> None:
        self.failed = False

    def __call__(self, call: LiveCall, event: ev.Input, effects: list[ev.Effect], before: str, us: int) -> None:
        if not self.failed and any(isinstance(e, ev.SendAudio) for e in effects):
            self.failed = True
            raise RuntimeError("a bug in this call's code")


async def _run(store: MemoryStore, then: ev.Input | None = None, bug: Bug | None = None) -> tuple[LiveCall, Phone]:
    flow = load_flow(LOCAL_FLOW)
    providers = build_providers(flow, {})
    phone = Phone()
    store.open_call("c", started_at="2026-12-02T00:00:00+00:00", flow=flow.name)
    call = LiveCall(call_id="c", flow=flow, providers=providers, phone=phone, store=store, seed=1, params={},
                    on_step=bug)
    phone.call = call
    if then is not None:
        call.emit(then)
    await asyncio.wait_for(call.wait(), 20)
    await providers.aclose()
    return call, phone


def test_a_failure_in_the_call_is_a_logged_fault_the_caller_hears_and_the_call_hangs_up() -> None:
    store = MemoryStore()
    call, phone = asyncio.run(_run(store, bug=Bug()))
    log = store.load("c")
    faults = [e for e in log if isinstance(e, ev.RuntimeFault)]
    assert [f.reason for f in faults] == ["error"]
    after = [e for e in log if e.seq > faults[0].seq]
    fallback = next(e for e in after if isinstance(e, ev.Speak))
    assert (fallback.text, fallback.purpose) == (call.flow.fallback.llm, "fallback")
    assert any(isinstance(e, ev.SendAudio) and e.seq > fallback.seq for e in after)  # it was heard
    assert [e.reason for e in after if isinstance(e, ev.Hangup)] == ["error"]
    assert phone.hung_up.is_set() and call.outcome == "error"
    assert reproduce(call.flow, log).ok  # the fault and all it did replay like any input


def test_a_shutdown_hangs_up_through_the_machine_and_the_log() -> None:
    store = MemoryStore()
    call, phone = asyncio.run(_run(store, ev.RuntimeFault(t_ms=0, reason="shutdown")))
    log = store.load("c")
    assert [e.reason for e in log if isinstance(e, ev.Hangup)] == ["shutdown"]
    assert phone.hung_up.is_set()
    assert reproduce(call.flow, log).ok
