"""The live-call harness shared by bench/v2v.py, bench/budget.py, bench/barge_in.py and bench/call_memory.py.

Two processes. The engine under test runs alone in its own (bench/engine_proc.py: `engine serve`'s Server
with the real Deepgram / Groq adapters), so the load generator's CPU does not count against it. This
process is the load generator: the fixed-delay provider fakes (bench/fakes.py) on loopback and N simulated
phones (callstate/simcaller.py) streaming the packaged speech fixtures, then silence, in real time, and
echoing marks as a phone does.

Per caller line it measures voice-to-voice as the caller hears it (first agent media frame received minus
the caller's speech end) and splits it with the fakes' timestamps, all on this process's loop clock:

    v2v = audio_fwd + stt_wait + final_to_llm + llm_wait + token_to_tts + tts_wait + tts_to_caller

where audio_fwd, final_to_llm, token_to_tts and tts_to_caller are the engine, its adapters and loopback
(each split further with the engine probe's instants), and the *_wait are the providers' fixed delays
(plus the fakes' own timer lateness).

The join of a caller to its STT stream is read back from the engine's log (each transcript names its
stream); lines, LLM and TTS requests carry the tag "caller <stream> line <n>" through the texts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import math
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.audio import load_fixture  # noqa: E402
from bench.fakes import API_KEY, DeepgramFake, GroqFake, tag_of  # noqa: E402
from callstate.simcaller import CallerLine, SimCaller  # noqa: E402
from engine import events as ev  # noqa: E402
from logstore import open_store  # noqa: E402

FIXTURES = ["shipment_1", "shipment_4", "shipment_2", "shipment_3"]
DATE = datetime.date.today().isoformat()  # the day the bench runs (the machine's clock)


# ------------------------------------------------------------------------------------------ numbers

def pct(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no data."""
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def p50_p99(xs: Sequence[float], unit: str = "ms", digits: int = 1) -> str:
    return f"p50 {med(xs):.{digits}f} / p99 {pct(xs, 99):.{digits}f} {unit} (n={len(xs)})"


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ------------------------------------------------------------------------------------------ setup

@dataclass(frozen=True)
class Profile:
    """The providers' fixed delays."""

    stt_after: str = "speech_end"  # speech_end | finalize (bench/fakes.py)
    stt_final_ms: int = 150
    llm_ttft_ms: int = 200
    llm_token_ms: int = 5
    llm_rest: str = "It arrives Thursday."
    llm_whole_first: bool = True  # the first token is the whole first clause
    tts_ttfb_ms: int = 100
    ms_per_char: int = 15

    @property
    def ideal_ms(self) -> int:
        """Voice-to-voice of an engine that adds nothing, STT timed from the speech end."""
        return self.stt_final_ms + self.llm_ttft_ms + self.tts_ttfb_ms


def bench_flow(*, on_punctuation_ms: int, preemptive: bool = True, finalize: bool = True,
               first_clause: bool = True) -> dict[str, Any]:
    """The flow under test: the standard stack (Deepgram, Groq, Deepgram Aura), no greeting, no filler.

    Fillers are off: a filler line would be the "first agent audio" of a slow turn and hide its latency.
    """
    return {
        "name": "bench", "greeting": None,
        "stt": {"provider": "deepgram", "finalize_on_vad_stop": finalize},
        "llm": {"provider": "groq"}, "tts": {"provider": "deepgram"},
        "turn_taking": {"endpointing": {"on_punctuation_ms": on_punctuation_ms},
                        "preemptive_generation": preemptive, "streaming": {"first_clause": first_clause},
                        "filler": {"enabled": False}},
    }


def caller_lines(n: int, *, barge_every: int = 0, barge_after_ms: int = 600, gap_ms: int = 300,
                 first_ms: int = 1000) -> list[CallerLine]:
    """n lines cycling the shipment fixtures; the first ``first_ms`` into the call, then ``gap_ms`` after the agent.

    With ``barge_every=k`` every kth line barges in ``barge_after_ms`` into the agent's audio instead.
    """
    out = []
    for i in range(n):
        audio = load_fixture(FIXTURES[i % len(FIXTURES)])
        if barge_every and i % barge_every == barge_every - 1:
            out.append(CallerLine(audio=audio, barge_in_after_ms=barge_after_ms))
        else:
            out.append(CallerLine(audio=audio, gap_ms=first_ms if i == 0 else gap_ms))
    return out


class Caller(SimCaller):
    """SimCaller with a sub-millisecond clock (its own rounds to whole ms)."""

    def _now_ms(self) -> float:  # type: ignore[override]
        assert self._loop is not None
        return (self._loop.time() - self._t0) * 1000


# ------------------------------------------------------------------------------------------ engine process

class EngineProcess:
    """The engine under test: ``workers`` processes of bench/engine_proc.py on one port (SO_REUSEPORT when
    more than one, as `engine serve --workers` runs them), logging to ``db`` (a PostgreSQL URL) or to a
    SQLite file in ``workdir``. Stats are gathered from every worker's probe and merged."""

    def __init__(self, flow: dict[str, Any], env: dict[str, str], workdir: Path, *, tracemalloc: bool = False,
                 workers: int = 1, db: str | None = None) -> None:
        self.flow, self.env, self.workdir, self.tracemalloc = flow, env, workdir, tracemalloc
        self.workers = workers
        self.db = db or str(workdir / "calls.db")
        self.procs: list[asyncio.subprocess.Process] = []
        self.probe_ports: list[int] = []
        self.port = 0
        self.pid = 0

    async def __aenter__(self) -> EngineProcess:
        flow_path = self.workdir / "flow.json"
        flow_path.write_text(json.dumps(self.flow))
        if self.workers > 1:
            with socket.socket() as s:  # a free port for the workers to share
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        for i in range(self.workers):
            err = (self.workdir / f"engine{i or ''}.log").open("w")
            args = [sys.executable, str(ROOT / "bench/engine_proc.py"), "--flow", str(flow_path), "--db", self.db,
                    "--port", str(self.port)]
            if self.workers > 1:
                args.append("--reuse-port")
            if self.tracemalloc:
                args.append("--tracemalloc")
            proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err, cwd=ROOT,
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"})
            err.close()
            self.procs.append(proc)
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            if not line.startswith(b"PORT "):
                raise RuntimeError(f"engine process did not start: {line!r}; see {self.workdir / 'engine.log'}")
            self.port, probe = (int(x) for x in line.split()[1:3])
            self.probe_ports.append(probe)
        self.pid = self.procs[0].pid
        return self

    async def __aexit__(self, *exc: object) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 40)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    @property
    def media_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/media"

    async def get(self, path: str) -> dict[str, Any]:
        """Every worker's probe answer, merged: lists joined, numbers added."""
        async with aiohttp.ClientSession() as s:
            bodies = []
            for port in self.probe_ports:
                async with s.get(f"http://127.0.0.1:{port}{path}") as r:
                    bodies.append(await r.json())
        merged = bodies[0]
        for body in bodies[1:]:
            for k, v in body.items():
                merged[k] = merged[k] + v if isinstance(v, list | int | float) and merged.get(k) is not None else v
        return merged

    async def wait_idle(self, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (await self.get("/bench/stats"))["active"] == 0:
                return
            await asyncio.sleep(0.1)


@contextlib.contextmanager
def fresh_log(db: str) -> Iterator[str | None]:
    """``sqlite``: None (the engine's own file in its workdir). A postgresql:// URL: that database with a
    fresh schema (dropped afterwards), so each run starts from an empty log."""
    if db == "sqlite":
        yield None
        return
    import psycopg

    schema = f"bench_{os.getpid()}_{random.getrandbits(32):08x}"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{db}{'&' if '?' in db else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


# ------------------------------------------------------------------------------------------ one run

@dataclass
class LineRow:
    call: int
    stream: int | None
    line: int
    v2v: float | None
    parts: dict[str, float] = field(default_factory=dict)  # ms


@dataclass
class RunResult:
    concurrency: int
    calls: int
    rows: list[LineRow]
    engine: dict[str, Any]  # /bench/stats after the run
    cpu_s: float
    call_s: float
    loadgen_lag_ms: list[float]
    loadgen_cpu_s: float  # this process: the fakes and the simulated phones
    wall_s: float
    timed_out: int
    load_before: str
    load_after: str

    def v2vs(self) -> list[float]:
        return [r.v2v for r in self.rows if r.v2v is not None]


async def _lag_monitor(out: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(0.05)
        out.append((loop.time() - t - 0.05) * 1000)


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _streams_by_sid(db: str) -> dict[str, int]:
    """call_sid -> the STT stream its transcripts name (read back from the engine's log)."""
    out: dict[str, int] = {}
    store = open_store(db, readonly=True)
    try:
        for row in store.list_calls():
            for e in store.load(row.call_id):
                if isinstance(e, ev.Transcript) and (tag := tag_of(e.text)) is not None:
                    out[str(row.meta.get("call_sid", ""))] = tag[0]
                    break
    finally:
        store.close()
    return out


async def run(profile: Profile, flow: dict[str, Any], *, concurrency: int, calls: int, lines: int,
              barge_every: int = 0, gap_ms: int = 300, first_ms: int = 1000, stagger_s: float = 4.0,
              warmup: bool = True, seed: int = 0,
              tracemalloc: bool = False, workers: int = 1, db: str | None = None,
              on_loaded: Any = None, on_ready: Any = None, script: list[CallerLine] | None = None) -> RunResult:
    """``calls`` calls of ``lines`` lines, ``concurrency`` at a time (slots started at random offsets)."""
    dg = DeepgramFake(after=profile.stt_after, final_ms=profile.stt_final_ms, ttfb_ms=profile.tts_ttfb_ms,
                      ms_per_char=profile.ms_per_char)
    groq = GroqFake(ttft_ms=profile.llm_ttft_ms, token_ms=profile.llm_token_ms, rest=profile.llm_rest,
                    whole_first=profile.llm_whole_first)
    lag: list[float] = []
    with tempfile.TemporaryDirectory(prefix="callstate-bench-") as tmp:
        async with dg, groq:
            # DEEPGRAM_TTS_MAX_STREAMS: the fakes have no project cap, and the bench measures the engine
            env = {"DEEPGRAM_API_KEY": API_KEY, "DEEPGRAM_BASE_URL": dg.url, "GROQ_API_KEY": API_KEY,
                   "GROQ_BASE_URL": groq.url, "DEEPGRAM_TTS_MAX_STREAMS": "1000"}
            async with EngineProcess(flow, env, Path(tmp), tracemalloc=tracemalloc, workers=workers,
                                     db=db) as engine:
                if warmup:  # imports, SDK clients and connection pools warm; not measured
                    await Caller(engine.media_url, lines=caller_lines(2), greeting=False, call_index=9999,
                                 timeout_s=30).run()
                    await engine.wait_idle()
                if on_ready is not None:
                    await on_ready(engine)
                before = await engine.get("/bench/stats?reset=1")
                n_before = len(dg.streams)
                load_before = loadavg()
                monitor = asyncio.create_task(_lag_monitor(lag))
                cpu_before = _cpu_s()
                rng = random.Random(seed)
                if script is None:
                    script = caller_lines(lines, barge_every=barge_every, gap_ms=gap_ms, first_ms=first_ms)
                timeout = len(script) * 10 + sum(x.gap_ms for x in script) / 1000 + 30
                sims: list[Caller] = []
                results: list[Any] = []

                async def slot(j: int) -> None:
                    await asyncio.sleep(rng.uniform(0, stagger_s) if concurrency > 1 else 0)
                    for i in range(j, calls, concurrency):
                        sim = Caller(engine.media_url, lines=script, greeting=False, call_index=i + 1,
                                     timeout_s=timeout)
                        sims.append(sim)
                        results.append(await sim.run())

                t0 = time.monotonic()
                slots = [asyncio.create_task(slot(j)) for j in range(concurrency)]
                if on_loaded is not None:
                    await on_loaded(engine, slots)
                await asyncio.wait_for(asyncio.gather(*slots), timeout * math.ceil(calls / concurrency) + 60)
                wall = time.monotonic() - t0
                loadgen_cpu = _cpu_s() - cpu_before
                monitor.cancel()
                await engine.wait_idle()
                after = await engine.get("/bench/stats")
                load_after = loadavg()
            sid_stream = _streams_by_sid(engine.db)
            if os.environ.get("BENCH_KEEP"):  # debugging: keep the engine's log and stderr
                keep = Path(os.environ["BENCH_KEEP"])
                keep.mkdir(parents=True, exist_ok=True)
                for name in ("calls.db", "engine.log", "flow.json"):
                    if (Path(tmp) / name).exists():
                        (keep / name).write_bytes((Path(tmp) / name).read_bytes())
    rows = _rows(profile, sims, sid_stream, dg, groq, n_before, {c["call_sid"]: c for c in after["calls"]})
    call_s = sum(c["seconds"] for c in after["calls"])
    return RunResult(concurrency=concurrency, calls=calls, rows=rows, engine=after,
                     cpu_s=after["cpu_s"] - before["cpu_s"], call_s=call_s, loadgen_lag_ms=lag,
                     loadgen_cpu_s=loadgen_cpu, wall_s=wall,
                     timed_out=sum(1 for s in sims if s.result.timed_out), load_before=load_before,
                     load_after=load_after)


FINAL, START_LLM, SPEAK, SEND_AUDIO, CLEAR, RESPOND = 1, 2, 4, 8, 16, 32  # bench/engine_proc.py's step flags


def _after(steps: list[list[Any]], i: int, pred: Any) -> int | None:
    return next((j for j in range(i, len(steps)) if pred(steps[j])), None)


def _engine_hops(probe: dict[str, Any], k: int) -> dict[str, float] | None:
    """Engine-side instants (s, CLOCK_MONOTONIC) of caller line k's answer, from the probe's steps."""
    steps = probe["steps"]
    finals = [j for j, st in enumerate(steps) if st[4] & FINAL]
    if k > len(finals):
        return None
    f = finals[k - 1]
    llm = _after(steps, f, lambda st: st[4] & START_LLM)
    if llm is None:
        return None
    tok = _after(steps, llm + 1, lambda st: st[0] == "LlmToken")
    speak = _after(steps, llm, lambda st: st[4] & SPEAK)
    if tok is None or speak is None:
        return None
    audio = _after(steps, speak + 1, lambda st: st[0] == "TtsAudio" and st[4] & SEND_AUDIO)
    if audio is None:
        return None
    send_done = steps[audio][2]
    wire = next((t for t in probe["runs"] if t >= send_done), None)
    ns = 1e-9
    return {"final_q": steps[f][1] * ns, "llm_done": steps[llm][2] * ns, "token_q": steps[tok][1] * ns,
            "speak_done": steps[speak][2] * ns, "audio_q": steps[audio][1] * ns, "send_done": send_done * ns,
            "wire": wire * ns if wire is not None else math.nan}


def _rows(profile: Profile, sims: list[Caller], sid_stream: dict[str, int], dg: DeepgramFake, groq: GroqFake,
          n_before: int, probes: dict[str, Any]) -> list[LineRow]:
    llm_by_tag: dict[tuple[int, int], list[Any]] = {}
    for r in groq.requests:
        if r.tag is not None:
            llm_by_tag.setdefault(r.tag, []).append(r)
    speak_by_tag: dict[tuple[int, int], Any] = {}
    for s in dg.speaks:
        if s.tag is not None and s.tag not in speak_by_tag:
            speak_by_tag[s.tag] = s  # the first line spoken for that caller line: its first clause
    rows = []
    for sim in sims:
        stream = sid_stream.get(sim.call_sid)
        for k, line in enumerate(sim.result.lines, start=1):
            v2v = line.voice_to_voice_ms
            row = LineRow(call=int(sim.call_sid[2:], 16), stream=stream, line=k, v2v=v2v)
            rows.append(row)
            if stream is None or v2v is None or stream > len(dg.streams) or stream <= n_before:
                continue
            utts = dg.streams[stream - 1].utts
            if k > len(utts):
                continue
            u = utts[k - 1]
            tag = (stream, k)
            llms = [r for r in llm_by_tag.get(tag, []) if r.first_token is not None and not r.cancelled]
            speak = speak_by_tag.get(tag)
            if u.end_arrival is None or u.final_sent is None or not llms or speak is None \
                    or speak.flush is None or speak.first_audio is None:
                continue
            llm = llms[-1]
            end = sim._t0 + line.speech_end_ms / 1000
            first = sim._t0 + line.first_agent_ms / 1000
            ms = 1000.0
            row.parts = {
                "audio_fwd": (u.end_arrival - end) * ms,
                "stt_wait": (u.final_sent - u.end_arrival) * ms,
                "final_to_llm": (llm.arrived - u.final_sent) * ms,
                "llm_wait": (llm.first_token - llm.arrived) * ms,
                "token_to_tts": (speak.flush - llm.first_token) * ms,
                "tts_wait": (speak.first_audio - speak.flush) * ms,
                "tts_to_caller": (first - speak.first_audio) * ms,
                "stt_late": (u.final_sent - u.due) * ms if u.due is not None else math.nan,
            }
            if u.finalize_arrival is not None:
                row.parts["end_to_finalize"] = (u.finalize_arrival - u.end_arrival) * ms
            e = _engine_hops(probes[sim.call_sid], k) if sim.call_sid in probes else None
            if e is not None:
                row.parts.update({
                    "stt_in": (e["final_q"] - u.final_sent) * ms,  # Deepgram SDK receive + parse
                    "final_step": (e["llm_done"] - e["final_q"]) * ms,  # inbox wait + feed/log/dispatch
                    "llm_out": (llm.arrived - e["llm_done"]) * ms,  # task start, groq SDK, httpx, loopback
                    "llm_in": (e["token_q"] - llm.first_token) * ms,  # SSE, groq SDK parse
                    "token_step": (e["speak_done"] - e["token_q"]) * ms,
                    "tts_out": (speak.flush - e["speak_done"]) * ms,  # tts worker, WS connect, Speak + Flush
                    "tts_in": (e["audio_q"] - speak.first_audio) * ms,
                    "audio_step": (e["send_done"] - e["audio_q"]) * ms,
                    "pace": (e["wire"] - e["send_done"]) * ms,  # send task, TwilioPhone pacing, to the socket
                    "phone_out": (first - e["wire"]) * ms,  # loopback to the simulated phone
                })
    return rows


# ------------------------------------------------------------------------------------------ engine-side figures

def engine_figures(stats: dict[str, Any]) -> dict[str, list[float]]:
    """Per-input engine time, inbox wait, and the engine's time on each turn's critical path (ms)."""
    engine_us: list[float] = []
    wait_us: list[float] = []
    max_late: list[float] = []
    barge_us: list[float] = []
    clear_us: list[float] = []
    for c in stats["calls"]:
        engine_us += c["engine_us"]
        barge_us += c["barge_in_us"]
        max_late.append(c["max_late_ms"])
        for _type, queued, stepped, us, _clear in c["steps"]:
            wait_us.append(max(0.0, (stepped - queued) / 1000 - us))
        for queued, _step_end, sent in c["clears"]:
            clear_us.append((sent - queued) / 1000)
    return {"engine_us": engine_us, "wait_us": wait_us, "max_late_ms": max_late, "barge_in_us": barge_us,
            "clear_us": clear_us, "flush_us": [float(x) for x in stats["flush_us"]],
            "lag_ms": stats["lag_ms"], "gc_us": [float(g[1]) for g in stats.get("gc", [])],
            "gc_cpu_us": [float(g[2]) for g in stats.get("gc", [])],
            "gc2_us": [float(g[1]) for g in stats.get("gc", []) if g[0] == 2]}


HOPS = {
    "audio_fwd": "caller's last speech frame -> the STT fake (via the engine)",
    "final_to_llm": "final sent -> LLM request at the fake, of which:",
    "  stt_in": "Deepgram SDK receive + parse -> emit",
    "  final_step": "inbox wait + feed/log/dispatch of the final (and endpoint timer)",
    "  llm_out": "LLM task start, groq SDK, httpx, loopback",
    "token_to_tts": "first token sent -> TTS Flush at the fake, of which:",
    "  llm_in": "httpx + SSE + groq SDK parse -> emit",
    "  token_step": "inbox wait + feed/log/dispatch of the token",
    "  tts_out": "TTS worker, speak WebSocket connect, Speak + Flush",
    "tts_to_caller": "first TTS byte sent -> first agent frame at the caller, of which:",
    "  tts_in": "speak socket receive -> emit",
    "  audio_step": "inbox wait + feed/log/dispatch of TtsAudio",
    "  pace": "send task + TwilioPhone pacing -> socket",
    "  phone_out": "engine socket -> simulated phone",
    "stt_wait": "speech end at the fake -> final sent (the profile's STT delay)",
    "end_to_finalize": "speech end at the fake -> Finalize received",
    "llm_wait": "LLM request -> first token (the profile)",
    "tts_wait": "Flush -> first audio (the profile)",
    "stt_late": "the STT fake's final later than due (its timer / VAD hangover)",
}


def summary(res: RunResult, profile: Profile, *, added: bool = True) -> list[str]:
    """The printable block for one run."""
    v = res.v2vs()
    f = engine_figures(res.engine)
    parts = [r.parts for r in res.rows if r.parts]
    out = [f"-- {res.concurrency} concurrent call(s), {res.calls} calls, {len(res.rows)} lines, "
           f"wall {res.wall_s:.0f} s, load avg {res.load_before} -> {res.load_after}",
           f"   engine: {res.engine.get('loop', 'asyncio')} loop, gc {os.environ.get('CALLSTATE_GC', 'freeze')}"]
    if res.timed_out:
        out.append(f"   !! {res.timed_out} call(s) timed out")
    missing = sum(1 for r in res.rows if r.v2v is None)
    out.append(f"   voice-to-voice (caller's ear): {p50_p99(v)}" + (f"; {missing} lines unanswered" if missing else ""))
    first = [r for r in res.rows if r.line == 1]
    later = [r for r in res.rows if r.line > 1]
    if added:
        ideal = profile.ideal_ms
        out.append(f"   engine-added = v2v - {ideal} ms: {p50_p99([x - ideal for x in v], digits=2)}")
        for name, rows in (("first turn", first), ("later turns", later)):
            xs = [r.v2v - ideal for r in rows if r.v2v is not None]
            out.append(f"     {name + ':':<13} {p50_p99(xs, digits=2)}")
    out.append(f"     {'hop (ms)':<16} {'all p50/p99':>13} {'first p50/p99':>15} {'later p50/p99':>15}")
    for key in HOPS:
        k = key.strip()
        cols = []
        for rows in (res.rows, first, later):
            xs = [r.parts[k] for r in rows if not math.isnan(r.parts.get(k, math.nan))]
            cols.append(f"{med(xs):.2f}/{pct(xs, 99):.2f}" if xs else "-")
        if cols[0] != "-":
            out.append(f"     {key:<16} {cols[0]:>13} {cols[1]:>15} {cols[2]:>15}   {HOPS[key]}")
    if parts:
        eng = [p["audio_fwd"] + p["final_to_llm"] + p["token_to_tts"] + p["tts_to_caller"] for p in parts]
        fakes = [p["stt_wait"] + p["llm_wait"] + p["tts_wait"] - profile.ideal_ms for p in parts]
        if profile.stt_after == "speech_end":
            out.append(f"     engine+adapters+loopback hops: {p50_p99(eng, digits=2)}; "
                       f"fakes' own lateness: {p50_p99(fakes, digits=2)}")
    cpu_per = res.cpu_s / res.call_s * 1000 if res.call_s else math.nan
    out.append(f"   engine CPU: {res.cpu_s:.1f} s over {res.call_s:.0f} call-s = {cpu_per:.2f} ms per call-second "
               f"({cpu_per / 10:.2f}% of a core per call); one core at this load: ~{1000 / cpu_per:.0f} calls")
    lines_per_min = len(res.rows) / res.call_s * 60 if res.call_s else math.nan
    out.append(f"   load: {lines_per_min:.1f} caller lines per call-minute; engine process "
               f"{res.cpu_s / res.wall_s:.0%} of a core, load generator (fakes + phones) "
               f"{res.loadgen_cpu_s / res.wall_s:.0%} of a core over the {res.wall_s:.0f} s of load")
    out.append(f"   engine per input (EngineTimes.engine_us): {p50_p99(f['engine_us'], 'us', 0)}; "
               f"inbox wait {p50_p99(f['wait_us'], 'us', 0)}")
    by_type: dict[str, list[float]] = {}
    for c in res.engine["calls"]:
        for name, _queued, _stepped, us, _flags in c["steps"]:
            by_type.setdefault(name, []).append(us)
    slow = sorted(by_type.items(), key=lambda kv: -pct(kv[1], 99))[:4]
    out.append("     slowest inputs: " + ", ".join(f"{k} p50 {med(v):.0f} / p99 {pct(v, 99):.0f} us (n={len(v)})"
                                             for k, v in slow))
    out.append(f"   Store.flush: {p50_p99(f['flush_us'], 'us', 0)}")
    out.append(f"   pacing lateness (TwilioPhone.max_late_ms, worst per call): p50 {med(f['max_late_ms']):.1f} / "
               f"max {max(f['max_late_ms'], default=math.nan):.1f} ms")
    out.append(f"   engine loop lag (50 ms sleeps): {p50_p99(f['lag_ms'])}, max {max(f['lag_ms'], default=0):.1f}")
    gc_us = f["gc_us"]
    if gc_us:
        cpu = f["gc_cpu_us"]
        out.append(f"   engine GC pauses: {len(gc_us)} ({len(f['gc2_us'])} full), wall {p50_p99(gc_us, 'us', 0)}, "
                   f"max {max(gc_us):.0f} us; CPU p99 {pct(cpu, 99):.0f}, max {max(cpu):.0f} us")
    full = res.engine.get("full_gc", {})
    if full:
        out.append("   a full collection: " + "; ".join(
            f"{k} {v['cpu_ms']:.1f} ms CPU over {v['tracked']} objects ({v['frozen']} frozen)"
            for k, v in full.items()))
    lag = res.loadgen_lag_ms
    out.append(f"   load-generator loop lag: {p50_p99(lag)}, max {max(lag, default=0):.1f}")
    if f["barge_in_us"]:
        out.append(f"   barge-in step (EngineTimes.barge_in_us): {p50_p99(f['barge_in_us'], 'us', 0)}")
        out.append(f"   barge-in input queued -> clear handed to the socket: {p50_p99(f['clear_us'], 'us', 0)}")
    return out


def dump(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=1, default=str))

