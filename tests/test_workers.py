"""`engine serve --workers 2` on PostgreSQL as an operator runs it: one port, concurrent calls all in one
log, one merged /metrics whichever worker answers, a worker killed -9 is restarted, SIGTERM drains all."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from callstate.cli import main
from callstate.simcaller import SimCaller
from callstate.workers import merge
from logstore import open_store
from tests.test_multihost import LOCAL_FLOW, ROOT, call_lines

CALLS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


async def get(port: str | int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.text()


async def healthy_workers(port: int) -> int:
    try:
        status, body = await get(port, "/healthz")
    except aiohttp.ClientError:
        return 0
    return json.loads(body).get("workers", 0) if status == 200 else 0


async def until(cond, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Await a condition (sync or async) of another process: polled, bounded."""
    async with asyncio.timeout(timeout_s):
        while not ((await r) if inspect.isawaitable(r := cond()) else r):
            await asyncio.sleep(0.05)


def calls_total(metrics: str) -> int:
    return sum(int(float(v)) for v in re.findall(r"^callstate_calls_total\{[^}]*\} (\S+)$", metrics, re.M))


def test_merge_adds_every_series_and_keeps_each_family_once() -> None:
    one = "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"1\"} 2\n# TYPE h histogram\nh_bucket{le=\"5\"} 1\n"
    two = "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"1\"} 3\nx_total{a=\"2\"} 1\n" \
          "# TYPE h histogram\nh_bucket{le=\"5\"} 4\n"
    assert merge([one, two]) == ("# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"1\"} 5\nx_total{a=\"2\"} 1\n"
                                 "# TYPE h histogram\nh_bucket{le=\"5\"} 5\n")


def test_two_workers_one_port_one_log(pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    open_store(pg_url).close()  # the tables, before two workers race to create them
    port = free_port()
    sup = subprocess.Popen([sys.executable, "-m", "callstate.cli", "serve", "--workers", "2", "--port", str(port),
                            "--flow", str(LOCAL_FLOW), "--db", pg_url, "--insecure-skip-signature",
                            "--lease-s", "5", "--grace-s", "5"], cwd=ROOT, stderr=(tmp_path / "serve.log").open("w"))

    async def two_workers() -> bool:
        return await healthy_workers(port) == 2

    async def scenario() -> None:
        await until(two_workers)
        ws = f"ws://127.0.0.1:{port}/media"
        results = await asyncio.gather(*(SimCaller(ws, lines=call_lines(), call_index=i).run()
                                         for i in range(1, CALLS + 1)))
        assert all(r.hung_up and not r.timed_out for r in results)

        async def all_counted() -> bool:
            return calls_total((await get(port, "/metrics"))[1]) == CALLS
        await until(all_counted)
        for _ in range(6):  # whichever worker the kernel picks answers for the whole server
            assert calls_total((await get(port, "/metrics"))[1]) == CALLS
        reader = open_store(pg_url, readonly=True)
        try:  # every call's end written (the writer thread may still hold it) before a worker is killed
            await until(lambda: [r.status for r in reader.list_calls()] == ["ended"] * CALLS)
        finally:
            reader.close()
        before = children(sup.pid)
        victim = min(before)
        subprocess.run(["kill", "-9", str(victim)], check=True)
        await until(lambda: len(children(sup.pid) - before) == 1)  # restarted under a new pid
        await until(two_workers)

    try:
        asyncio.run(scenario())
        workers = children(sup.pid)
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=30) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)  # every worker drained and exited
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
    with open_store(pg_url, readonly=True) as log:
        rows = log.list_calls()
    assert sorted(r.call_id for r in rows) == [f"CA{i:032x}" for i in range(1, CALLS + 1)]
    assert {r.status for r in rows} == {"ended"}
    assert main(["check", "--db", pg_url]) == 0  # every call replays from the shared log

