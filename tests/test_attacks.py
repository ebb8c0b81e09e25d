"""Issue 11: `engine serve` and the CLI attacked as an adversary would, over loopback. Each test is one attack
that succeeded before the fix (numbered as in the issue); each is bounded in time and awaits conditions
instead of sleeping where it can."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from adapters.audio import load_fixture
from callstate.providers import build_providers
from callstate.server import Server, start
from callstate.simcaller import CallerLine, SimCaller
from engine.flowload import load_flow
from engine.store import SqliteStore
from replay.reproduce import reproduce

ROOT = Path(__file__).resolve().parent.parent
LOCAL_FLOW = ROOT / "tests/data/local_call.yaml"


def line(name: str, **kw: object) -> CallerLine:
    return CallerLine(audio=load_fixture(name), **{"gap_ms": 300, **kw})  # type: ignore[arg-type]


def engine(*args: str, timeout: float = 30, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "callstate.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})})


class Serve:
    """`engine serve` in a subprocess; its stderr goes to a file (a pipe nobody reads would fill and block)."""

    def __init__(self, db: Path, *extra: str, flow: Path = LOCAL_FLOW, env: dict[str, str] | None = None,
                 skip_signature: bool = True) -> None:
        self.log = db.with_suffix(f".{time.monotonic_ns()}.log")
        args = ["serve", "--flow", str(flow), "--port", "0", "--db", str(db), *extra]
        if skip_signature:
            args.append("--insecure-skip-signature")
        with self.log.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "callstate.cli", *args], stderr=err,
                                         stdout=err, text=True, cwd=ROOT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.port = int(self.wait_for(r"on http://127\.0\.0\.1:(\d+)").group(1))

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.output())
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError(f"no {pattern!r} in engine serve's output:\n{self.output()[-3000:]}")

    def stop(self, timeout: float = 20) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


async def until(cond: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not await cond():
            await asyncio.sleep(0.05)


async def active_calls(port: int) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as r:
        return int((await r.json())["active_calls"])


# ------------------------------------------------------------------------------------ 1. two servers, one log

def test_attack_01_a_second_server_on_a_live_log_refuses_and_touches_nothing(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    first = Serve(db)
    refusals: list[subprocess.CompletedProcess[str]] = []

    async def scenario() -> None:
        caller = SimCaller(f"ws://127.0.0.1:{first.port}/media", lines=[line("shipment_1")])
        task = asyncio.create_task(caller.run())

        async def live() -> bool:
            return await active_calls(first.port) == 1
        await until(live)
        # the same port (taken) and a free one: both must refuse before touching the log
        for port in (str(first.port), "0"):
            refusals.append(await asyncio.to_thread(
                engine, "serve", "--flow", str(LOCAL_FLOW), "--db", str(db), "--port", port,
                "--insecure-skip-signature", timeout=20))
        await asyncio.wait_for(task, 60)

    try:
        asyncio.run(scenario())
    finally:
        assert first.stop() == 0
    for r in refusals:
        assert r.returncode == 1
        (err,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert f"is in use by pid {first.proc.pid}: engine serve on http://127.0.0.1:{first.port}" in err
        assert "Traceback" not in r.stderr and "abandoned" not in r.stderr
    checked = engine("check", "--db", str(db))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    calls = engine("calls", "--db", str(db)).stdout
    assert "caller_hung_up" in calls and "abandoned" not in calls


# ------------------------------------------------------------------------- 6. the event loop waits on SQLite

def test_attack_06_a_locked_log_never_blocks_the_loop_and_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    flow = load_flow(LOCAL_FLOW)

    async def scenario() -> tuple[float, list[int | None]]:
        store = SqliteStore(db)
        server = Server(flow, build_providers(flow, {}), store, skip_signature=True)
        runner, port = await start(server)
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock for the whole call
        lag = 0.0
        stop = asyncio.Event()

        async def monitor() -> None:
            nonlocal lag
            loop = asyncio.get_running_loop()
            while not stop.is_set():
                t = loop.time()
                await asyncio.sleep(0.01)
                lag = max(lag, loop.time() - t - 0.01)

        mon = asyncio.create_task(monitor())
        try:
            result = await SimCaller(f"ws://127.0.0.1:{port}/media",
                                     lines=[line("shipment_1")]).run()

            async def ended() -> bool:
                return not server.calls
            await until(ended)
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as r:
                health = await r.json()
            assert health["log"]["queued_events"] > 0  # the log is waiting, visibly
        finally:
            stop.set()
            await mon
            other.execute("COMMIT")
            other.close()
            await runner.cleanup()
            store.close()
        return lag, [x.voice_to_voice_ms for x in result.lines]

    lag, v2v = asyncio.run(scenario())
    assert lag < 1.0, f"the loop stalled {lag:.1f} s on the log"
    assert all(x is not None for x in v2v)  # every line was answered while the log waited
    reader = SqliteStore(db, readonly=True)
    (row,) = reader.list_calls()
    log = reader.load(row.call_id)
    reader.close()
    assert row.status == "ended" and reproduce(flow, log).ok
