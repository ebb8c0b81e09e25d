"""Soak: N concurrent simulated calls for M minutes against the real `engine serve`, with provider faults
injected at random, then every call checked (issue 11).

    flock /work/coord/bench.lock python bench/soak.py --calls 30 --minutes 10 [--json out.json]

One `engine serve` process (the CLI exactly as a user runs it: the log's owner lock, the writer thread, the
connection guard) with the standard stack (the real Deepgram STT, Groq and Deepgram Aura adapters) and a
webhook tool. This process is the load generator: bench/fakes.py's Deepgram and Groq on loopback, with faults
drawn per request from a seeded random source:

- STT drop: a listen socket is aborted (no close frame) a few seconds into a call; the adapter reconnects;
- LLM 429 (with retry-after) or 500 before the stream starts;
- TTS error: a speak upgrade answered 500;
- webhook timeout: the tool's server answers after the tool's timeout_ms;

and ``--calls`` slots each running calls of 3 caller lines back to back until ``--minutes`` are up.

Reported: calls completed (their log closed ``ended``), events logged vs events the engine produced
(/metrics ``callstate_events_total``; rows in the events table), `engine check` over the whole log, the
engine's RSS and open files sampled every 15 s, its loop lag p99 (/metrics), the faults injected, and the
machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import fakes  # noqa: E402
from bench.harness import Caller, caller_lines, commit, loadavg  # noqa: E402
from tests.fakes.base import Routes  # noqa: E402

LINES_PER_CALL = 3
TOOL_TIMEOUT_MS = 800


class Faults:
    def __init__(self, seed: int, *, stt_drop: float, llm_error: float, tts_error: float, tool: float,
                 tool_timeout: float) -> None:
        self.rng = random.Random(seed)
        self.p = {"stt_drop": stt_drop, "llm_error": llm_error, "tts_error": tts_error, "tool": tool,
                  "tool_timeout": tool_timeout}
        self.counts: dict[str, int] = {"stt_drop": 0, "llm_429": 0, "llm_500": 0, "tts_error": 0,
                                       "tool_call": 0, "tool_timeout": 0}

    def draw(self, what: str) -> bool:
        return self.rng.random() < self.p[what]


class FaultyDeepgram(fakes.DeepgramFake):
    def __init__(self, faults: Faults, **kw: Any) -> None:
        super().__init__(**kw)
        self.faults = faults

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        if self.faults.draw("stt_drop"):
            self.faults.counts["stt_drop"] += 1
            transport = request.transport
            delay = self.faults.rng.uniform(2.0, 8.0)
            asyncio.get_running_loop().call_later(delay, lambda: transport is not None and transport.abort())
        return await super()._listen(request)

    async def _speak(self, request: web.Request) -> web.StreamResponse:
        if self.faults.draw("tts_error"):
            self.faults.counts["tts_error"] += 1
            return web.json_response({"err_code": "INTERNAL", "err_msg": "injected"}, status=500)
        return await super()._speak(request)


class FaultyGroq(fakes.GroqFake):
    """bench/fakes.py's Groq, plus: errors before the stream, and (at random) a call to the `lookup` tool."""

    def __init__(self, faults: Faults, **kw: Any) -> None:
        super().__init__(**kw)
        self.faults = faults

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        if self.faults.draw("llm_error"):
            if self.faults.rng.random() < 0.5:
                self.faults.counts["llm_429"] += 1
                return web.json_response({"error": {"message": "Rate limit reached", "type": "tokens"}},
                                         status=429, headers={"retry-after": "0.2"})
            self.faults.counts["llm_500"] += 1
            return web.json_response({"error": {"message": "Internal Server Error"}}, status=500)
        body = await request.json()
        last = (body.get("messages") or [{}])[-1]
        if last.get("role") == "user" and body.get("tools") and self.faults.draw("tool"):
            self.faults.counts["tool_call"] += 1
            return await self._tool_call(request)
        return await super()._completions(request)

    async def _tool_call(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        call = {"index": 0, "id": f"call_{self.faults.rng.getrandbits(32):08x}", "type": "function",
                "function": {"name": "lookup", "arguments": '{"tracking_number": "451992"}'}}
        await resp.write(self._chunk({"role": "assistant", "content": None, "tool_calls": [call]}))
        await resp.write(self._chunk({}, "tool_calls"))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def soak_flow(webhook_url: str) -> str:
    return json.dumps({
        "name": "soak", "greeting": "Acme shipping, how can I help?",
        "stt": {"provider": "deepgram"}, "llm": {"provider": "groq"}, "tts": {"provider": "deepgram"},
        "tools": {"lookup": {"description": "Look a shipment up.",
                             "parameters": {"type": "object", "properties": {"tracking_number": {"type": "string"}}},
                             "webhook": {"url": webhook_url, "timeout_ms": TOOL_TIMEOUT_MS}}},
    })


def webhook(faults: Faults) -> Routes:
    async def lookup(request: web.Request) -> web.Response:
        if faults.draw("tool_timeout"):
            faults.counts["tool_timeout"] += 1
            await asyncio.sleep(TOOL_TIMEOUT_MS / 1000 + 0.5)
        return web.json_response({"status": "delayed", "eta": "Thursday"})

    return Routes(("POST", "/lookup", lookup))


def proc_sample(pid: int) -> tuple[float, int]:
    """The engine's RSS (MB) and open file descriptors."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


async def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    faults = Faults(args.seed, stt_drop=args.p_stt_drop, llm_error=args.p_llm_error, tts_error=args.p_tts_error,
                    tool=args.p_tool, tool_timeout=args.p_tool_timeout)
    dg = FaultyDeepgram(faults)
    groq = FaultyGroq(faults)
    db = work / "calls.db"
    flow = work / "soak.json"
    async with dg, groq, webhook(faults) as hook:
        flow.write_text(soak_flow(f"{hook.url}/lookup"))
        env = {**os.environ, "DEEPGRAM_API_KEY": fakes.API_KEY, "DEEPGRAM_BASE_URL": dg.url,
               "GROQ_API_KEY": fakes.API_KEY, "GROQ_BASE_URL": groq.url, "PYTHONUNBUFFERED": "1"}
        log = (work / "serve.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "callstate.cli", "serve", "--flow", str(flow), "--db", str(db),
                                 "--port", "0", "--insecure-skip-signature", "--grace-s", "30"],
                                stdout=log, stderr=log, cwd=ROOT, env=env)
        port = 0
        for _ in range(300):
            m = re.search(r"on http://127\.0\.0\.1:(\d+)", (work / "serve.log").read_text())
            if m:
                port = int(m.group(1))
                break
            await asyncio.sleep(0.1)
        if not port:
            proc.kill()
            raise SystemExit(f"engine serve did not start; see {work / 'serve.log'}")
        url = f"ws://127.0.0.1:{port}/media"
        samples: list[tuple[float, int, float, int]] = []  # (s, active calls, RSS MB, fds)
        results: list[Any] = []
        rng = random.Random(args.seed + 1)
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        load_before = loadavg()
        counter = iter(range(1, 10**9))

        async def metrics_text() -> str:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
                return await r.text()

        async def sampler() -> None:
            while True:
                text = await metrics_text()
                rss, fds = proc_sample(proc.pid)
                samples.append((time.monotonic() - t0, int(metric(text, "callstate_active_calls")), rss, fds))
                await asyncio.sleep(15)

        async def slot() -> None:
            await asyncio.sleep(rng.uniform(0, 5))
            while time.monotonic() < end:
                sim = Caller(url, lines=caller_lines(LINES_PER_CALL), call_index=next(counter), timeout_s=90)
                results.append(await sim.run())

        watcher = asyncio.create_task(sampler())
        await asyncio.gather(*[slot() for _ in range(args.calls)])
        wall = time.monotonic() - t0
        for _ in range(300):  # every call's task closes its log after its stream ends
            if metric(await metrics_text(), "callstate_active_calls") == 0:
                break
            await asyncio.sleep(0.1)
        final = await metrics_text()
        watcher.cancel()
        rss, fds = proc_sample(proc.pid)
        samples.append((time.monotonic() - t0, 0, rss, fds))
        load_after = loadavg()
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, 60)
        log.close()
    with sqlite3.connect(db) as raw:
        logged = raw.execute("SELECT count(*) FROM events").fetchone()[0]
        statuses = dict(raw.execute("SELECT status, count(*) FROM calls GROUP BY status").fetchall())
        outcomes = dict(raw.execute("SELECT outcome, count(*) FROM calls GROUP BY outcome").fetchall())
        last_seqs = raw.execute("SELECT coalesce(sum(last_seq), 0) FROM calls").fetchone()[0]
    raw.close()
    check = subprocess.run([sys.executable, "-m", "callstate.cli", "check", "--db", str(db)], capture_output=True,
                           text=True, cwd=ROOT)
    return {
        "commit": commit(), "calls_concurrent": args.calls, "minutes": args.minutes, "wall_s": round(wall, 1),
        "load_before": load_before, "load_after": load_after, "cpus": os.cpu_count(),
        "calls_started": len(results), "calls_timed_out": sum(1 for r in results if r.timed_out),
        "calls_logged": sum(statuses.values()), "calls_ended": statuses.get("ended", 0), "statuses": statuses,
        "outcomes": outcomes, "events_produced": int(metric(final, "callstate_events_total")),
        "events_logged": logged, "events_by_last_seq": last_seqs,
        "events_written_by_writer": int(metric(final, "callstate_log_events_written_total")),
        "events_lost": int(metric(final, "callstate_log_events_lost_total")),
        "check_rc": check.returncode, "check_summary": (check.stdout + check.stderr).strip().splitlines()[-1:],
        "check_failures": [x for x in check.stdout.splitlines() if x.startswith("call ")][:20],
        "loop_lag_p50_ms": metric(final, 'callstate_loop_lag_ms{quantile="0.5"}'),
        "loop_lag_p99_ms": metric(final, 'callstate_loop_lag_ms{quantile="0.99"}'),
        "loop_lag_max_ms": metric(final, 'callstate_loop_lag_ms{quantile="1"}'),
        "faults": faults.counts,
        "provider_errors": re.findall(r'callstate_provider_errors_total\{provider="(\w+)"\} (\d+)', final),
        "samples": [{"t_s": round(t), "active": a, "rss_mb": round(r, 1), "fds": f} for t, a, r, f in samples],
        "serve_exit": rc,
    }


def report(r: dict[str, Any]) -> str:
    s = r["samples"]
    mid = [x for x in s if x["t_s"] >= 60] or s
    lines = [
        f"soak: {r['calls_concurrent']} concurrent calls x {r['minutes']} min (commit {r['commit']}, {r['cpus']} "
        f"cores, load {r['load_before']} -> {r['load_after']})",
        f"calls: {r['calls_started']} started, {r['calls_ended']} ended in the log, {r['calls_timed_out']} phone "
        f"timeouts; statuses {r['statuses']}; outcomes {r['outcomes']}",
        f"events: {r['events_produced']} produced, {r['events_logged']} logged (sum of last_seq "
        f"{r['events_by_last_seq']}), writer lost {r['events_lost']}",
        f"engine check: rc {r['check_rc']}: {' '.join(r['check_summary'])}",
        f"loop lag: p50 {r['loop_lag_p50_ms']:.1f} ms, p99 {r['loop_lag_p99_ms']:.1f} ms, "
        f"max {r['loop_lag_max_ms']:.1f} ms",
        f"RSS: {mid[0]['rss_mb']} MB at {mid[0]['t_s']} s -> {s[-1]['rss_mb']} MB at the end "
        f"(max {max(x['rss_mb'] for x in s)}); open files {mid[0]['fds']} -> {s[-1]['fds']} "
        f"(max {max(x['fds'] for x in s)})",
        f"faults injected: {r['faults']}; provider errors seen: {dict(r['provider_errors'])}",
        "samples (s, active calls, RSS MB, fds): " + ", ".join(
            f"{x['t_s']}/{x['active']}/{x['rss_mb']}/{x['fds']}" for x in s),
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=30, help="concurrent calls")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--p-stt-drop", type=float, default=0.1, help="chance a listen socket is dropped")
    ap.add_argument("--p-llm-error", type=float, default=0.05, help="chance an LLM request gets 429 or 500")
    ap.add_argument("--p-tts-error", type=float, default=0.03, help="chance a speak upgrade gets 500")
    ap.add_argument("--p-tool", type=float, default=0.2, help="chance the LLM calls the webhook tool")
    ap.add_argument("--p-tool-timeout", type=float, default=0.3, help="chance the webhook answers too late")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="callstate-soak-") as tmp:
        result = asyncio.run(soak(args, Path(tmp)))
        if result["check_rc"] != 0 or os.environ.get("SOAK_KEEP"):
            keep = Path(os.environ.get("SOAK_KEEP") or "soak-failed")
            keep.mkdir(parents=True, exist_ok=True)
            for p in Path(tmp).iterdir():
                with contextlib.suppress(OSError):
                    (keep / p.name).write_bytes(p.read_bytes())
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
