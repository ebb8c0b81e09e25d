"""Several hosts on one PostgreSQL log, simulated on one machine: two real `engine serve` processes on
different ports share a database; calls run on both; one is killed with -9 mid-call. Its call is ended
(abandoned) by the other's lease sweep, every event it flushed before the kill is intact, any host lists
every call, and every completed call passes `engine check`. Bounded: leases of 3 s make the lapse fast."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from adapters.audio import load_fixture
from callstate.cli import main
from callstate.simcaller import CallerLine, SimCaller
from engine import events as ev
from logstore import open_store

ROOT = Path(__file__).resolve().parents[1]
LOCAL_FLOW = ROOT / "tests/data/local_call.yaml"
LEASE_S = 3.0  # short, so the test is quick; long enough that a loaded machine renews in time


def call_lines(*, hangup: bool = True) -> list[CallerLine]:
    return [CallerLine(audio=load_fixture("shipment_1"), gap_ms=300),
            CallerLine(audio=load_fixture("shipment_2"), gap_ms=300, hangup=hangup)]


class Host:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc, self.port = proc, port
        self.ws = f"ws://127.0.0.1:{port}/media"


@asynccontextmanager
async def engine_serve(db: str, *extra: str) -> AsyncIterator[Host]:
    """A real `engine serve` process; yields once it listens (the port it printed)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callstate.cli", "serve", "--flow", str(LOCAL_FLOW), "--port", "0", "--db", db,
        "--insecure-skip-signature", "--lease-s", str(LEASE_S), "--grace-s", "2", *extra,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT)
    assert proc.stderr is not None
    port = None
    try:
        async with asyncio.timeout(30):
            while port is None:
                line = (await proc.stderr.readline()).decode()
                assert line, "engine serve exited before listening"
                if m := re.search(r"serving flow .* on http://127\.0\.0\.1:(\d+)", line):
                    port = int(m.group(1))
        drain = asyncio.ensure_future(_drain(proc.stderr))  # keep reading: a full pipe would stall it
        yield Host(proc, port)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await proc.wait()
        if port is not None:
            await drain


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def until(condition, what: str, timeout_s: float = 40.0):  # type: ignore[no-untyped-def]
    """Await a condition on the shared log (polled: it is another process's database)."""
    async with asyncio.timeout(timeout_s):
        while not (result := await asyncio.to_thread(condition)):
            await asyncio.sleep(0.05)
    assert result, what
    return result


def test_two_hosts_one_postgres_one_killed_mid_call(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    reader = open_store(pg_url)  # created the tables; a reader (as a third host would be)

    def status(call_id: str) -> str | None:
        return next((c.status for c in reader.list_calls() if c.call_id == call_id), None)

    async def scenario() -> tuple[list[str], str, list[ev.Event]]:
        async with engine_serve(pg_url) as a, engine_serve(pg_url) as b:
            done_a = [SimCaller(a.ws, lines=call_lines(), call_index=i).run() for i in (1, 2)]
            done_b = [SimCaller(b.ws, lines=call_lines(), call_index=3).run()]
            victim = SimCaller(b.ws, lines=call_lines(hangup=False) * 3, call_index=4, timeout_s=30)
            victim_task = asyncio.ensure_future(victim.run())
            victim_id = victim.call_sid
            # mid-call: the greeting turn is over and flushed, the caller is still talking
            await until(lambda: status(victim_id) == "open" and len(reader.load(victim_id)) > 0,
                        "the victim call's first turn is flushed")
            await asyncio.gather(*done_a, *done_b)
            live_on_a = asyncio.ensure_future(SimCaller(a.ws, lines=call_lines(), call_index=5).run())
            await until(lambda: status(f"CA{5:032x}") == "open", "a call is live on host A too")
            flushed = await asyncio.to_thread(reader.load, victim_id)
            b.proc.kill()  # -9: no drain, no close_call, no lease release
            await b.proc.wait()
            await asyncio.wait_for(victim_task, 30)  # the caller sees its socket die
            await until(lambda: status(victim_id) == "abandoned", "host A's sweep abandons B's call")
            result = await asyncio.wait_for(live_on_a, 30)  # A's own live call goes on, untouched
            assert result.hung_up and not result.timed_out
            await until(lambda: status(f"CA{5:032x}") == "ended", "host A closes its call's log")
            completed = [f"CA{i:032x}" for i in (1, 2, 3, 5)]
            return completed, victim_id, flushed

    try:
        completed, victim_id, flushed = asyncio.run(scenario())
        rows = {c.call_id: c for c in reader.list_calls()}
        assert {cid: rows[cid].status for cid in [*completed, victim_id]} == {
            **dict.fromkeys(completed, "ended"), victim_id: "abandoned"}
        after = reader.load(victim_id)  # passes every seq / end check: nothing written after the end
        assert after[:len(flushed)] == flushed  # every event flushed before the kill, intact
        assert rows[victim_id].duration_ms == after[-1].t_ms  # its end: the last event that reached the log
    finally:
        reader.close()
    # any host lists every call, and every completed call reproduces and keeps every invariant
    assert main(["calls", "--db", pg_url]) == 0
    listed = capsys.readouterr().out
    assert all(cid in listed for cid in [*completed, victim_id])
    assert "abandoned" in listed
    assert main(["check", *completed, "--db", pg_url]) == 0
    assert "every call reproduces" in capsys.readouterr().out
