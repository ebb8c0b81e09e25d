"""The call log's write path: append throughput with batching, and what one flush costs, on SQLite or
PostgreSQL, in log format 2 (a StartLlm row holds only the messages new since the previous request).

    python bench/log_store.py [--calls 10] [--db sqlite|postgresql://...] [--tiny]

The events are a real log: bench/replay_speed.py's synthetic 10-minute call (about 10,500 events: audio
chunks, marks, tokens, transcripts, timers, StartLlm with its messages), copied under ``--calls`` call ids
into a fresh SQLite file on this machine's disk (WAL, synchronous=NORMAL, as `engine serve` opens it), or
with ``--db URL`` a fresh schema of that PostgreSQL database (each flush one transaction, commit durable).
Writes are timed where the store does them (synchronously here; `engine serve` does them on its writer
thread, off the event loop).

- append only: ``Store.append`` (the runtime's hot path: a seq check and a list append).
- runtime policy: append every event and flush where engine/runtime.py flushes (the agent's turn ends:
  a step that moves the machine back to listening, and CallEnded), calls one after another. Throughput is
  events / (append + flush) time; each flush's duration is recorded (median, p99) with its batch size.
- fixed batches: flush every 1, 10, 100, 1000 events, to show what batching buys.
- bytes per call in format 2, and what format 1 (whole history in every StartLlm) would have written.
``--tiny``: a 1-minute call, 2 copies.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import DATE, commit, fresh_log, pct
from bench.replay_speed import synthetic_call
from engine import events as ev
from engine.machine import CallMachine
from engine.states import CallState
from engine.store import Store, _row
from logstore import open_store


def turn_ends(flow, log: list[ev.Event]) -> set[int]:  # type: ignore[no-untyped-def]
    """Indexes in ``log`` after which the runtime flushes (its rule, applied to the logged inputs)."""
    machine = CallMachine(flow)
    ends: set[int] = set()
    i = 0
    while i < len(log):
        event = log[i]
        assert isinstance(event, ev.Input)
        before = machine.view.state
        _, effects = machine.step(event)
        i += 1 + len(effects)
        if (before != CallState.LISTENING and machine.view.state == CallState.LISTENING) or machine.view.ended:
            ends.add(i - 1)
    return ends


def open_calls(store: Store, n: int) -> list[str]:
    ids = [f"call-{i:04d}" for i in range(n)]
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    for cid in ids:
        store.open_call(cid, started_at=now, flow="bench")
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--db", default="sqlite", help="sqlite (default) or a postgresql:// URL (a fresh schema)")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    if args.tiny:
        args.calls, args.minutes = 2, 1
    flow, log = synthetic_call(args.minutes)
    ends = turn_ends(flow, log)
    n = len(log) * args.calls
    store_name = "SQLite" if args.db == "sqlite" else "PostgreSQL"
    print(f"bench/log_store.py  date {DATE}  commit {commit()}  log in {store_name}, format 2")
    print(f"log: {len(log)} events a call x {args.calls} calls = {n:,} events; {len(ends)} flushes a call")
    prev: dict[str, tuple[ev.Message, ...]] = {}  # one call's history, as the store keeps it
    rows = [_row("c", e, prev) for e in log]
    size = sum(len(r[5]) for r in rows)
    v1_size = sum(len(r[5]) for r in (_row("c", e) for e in log))
    llm = [len(r[5]) for e, r in zip(log, rows, strict=True) if isinstance(e, ev.StartLlm)]
    last = max((len(e.messages) for e in log if isinstance(e, ev.StartLlm)), default=0)
    print(f"data per call: {size / 1e6:.2f} MB, of which StartLlm {sum(llm) / size:.0%} ({len(llm)} requests, "
          f"up to {last} messages each); format 1 would write {v1_size / 1e6:.2f} MB")
    with tempfile.TemporaryDirectory(prefix="callstate-log-", dir="/var/tmp") as d, contextlib.ExitStack() as stack:
        tmp = Path(d)

        def fresh(name: str) -> Store:
            db = stack.enter_context(fresh_log(args.db)) or str(tmp / f"{name}.db")
            return open_store(db)

        store = fresh("append")
        ids = open_calls(store, args.calls)
        t = time.perf_counter()
        for cid in ids:
            for e in log:
                store.append(cid, e)
        append_s = time.perf_counter() - t
        store._pending.clear()  # not written: this run times the buffer alone
        store.close()
        print(f"append only (buffer): {n / append_s:,.0f} events/s ({append_s / n * 1e6:.2f} us per event)")

        store = fresh("policy")
        ids = open_calls(store, args.calls)
        flush_us: list[float] = []
        sizes: list[int] = []
        t = time.perf_counter()
        for cid in ids:
            for i, e in enumerate(log):
                store.append(cid, e)
                if i in ends:
                    sizes.append(len(store._pending))
                    f = time.perf_counter()
                    store.flush()
                    flush_us.append((time.perf_counter() - f) * 1e6)
        total_s = time.perf_counter() - t
        store.close()
        print(f"runtime policy (flush at each turn end): {n / total_s:,.0f} events/s appended and written "
              f"({total_s / n * 1e6:.2f} us per event)")
        print(f"one flush: median {statistics.median(flush_us):,.0f} us, p99 {pct(flush_us, 99):,.0f} us, "
              f"max {max(flush_us):,.0f} us (n={len(flush_us)}; median batch {statistics.median(sizes):.0f} "
              f"events, p99 {pct(sizes, 99):.0f})")

        for batch in (1, 10, 100, 1000):
            store = fresh(f"batch{batch}")
            ids = open_calls(store, args.calls)
            count = 0
            limit = min(n, 20_000) if batch == 1 else n  # one commit per event is slow: a sample is enough
            t = time.perf_counter()
            for cid in ids:
                for e in log:
                    if count >= limit:
                        break
                    store.append(cid, e)
                    count += 1
                    if count % batch == 0:
                        store.flush()
            store.flush()
            s = time.perf_counter() - t
            store.close()
            print(f"flush every {batch:>4} events: {count / s:>9,.0f} events/s ({count:,} events)")


if __name__ == "__main__":
    main()
