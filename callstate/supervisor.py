"""`engine serve --workers N`: N worker processes on one port (SO_REUSEPORT: the kernel spreads new
connections across them), a supervisor that restarts a worker that dies, and drains them all on SIGTERM.

The supervisor holds no call and no socket of its own: a worker is `engine serve` itself, with the same
arguments, one lease (owner id) each, so a worker killed mid-call has its calls ended by a sibling's sweep
once its lease lapses, exactly like a host that dies. Metrics and health are merged by the workers
(callstate/workers.py) over Unix sockets in a private directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

log = logging.getLogger("callstate.supervisor")

#: A worker that dies this soon after starting, this many times in a row, is failing, not crashing once:
#: stop restarting it (a taken port, a database that refuses us) and say so.
FAST_FAIL_S, FAST_FAILS = 5.0, 5


def _worker_argv(args: argparse.Namespace, worker_dir: str, index: int, workers: int) -> list[str]:
    """The command line the user gave (every option, also ones added later), as one worker; each worker holds
    its share of the connection cap."""
    kept: list[str] = []
    skip = False
    for a in getattr(args, "argv", None) or []:
        if skip:
            skip = False
            continue
        if a.split("=", 1)[0] in ("--workers", "--max-connections"):
            skip = "=" not in a
            continue
        kept.append(a)
    share = max(1, args.max_connections // workers)
    return [sys.executable, "-m", "callstate.cli", *kept, "--workers", "1", "--max-connections", str(share),
            "--worker-dir", worker_dir, "--worker-index", str(index)]


def supervise(args: argparse.Namespace, workers: int) -> int:
    if args.port == 0:
        print("error: --workers needs a fixed --port (the workers share it)", file=sys.stderr)
        return 2
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    from engine.store import StoreError
    from logstore import open_store

    try:  # the log's tables made once, and a SQLite log claimed for the whole server (its workers share it)
        store = open_store(args.db)
        store.claim(f"engine serve --workers {workers} on http://{args.host}:{args.port} (supervisor)")
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return _supervise(args, workers, lambda: stopping)
    finally:
        store.close()


def _supervise(args: argparse.Namespace, workers: int, stop_asked: Callable[[], bool]) -> int:
    stopping = False
    with tempfile.TemporaryDirectory(prefix="callstate-workers-") as worker_dir:  # mode 0700
        procs: dict[int, subprocess.Popen[bytes]] = {}
        started: dict[int, float] = {}
        fails: dict[int, int] = dict.fromkeys(range(workers), 0)

        def spawn(i: int) -> None:
            procs[i] = subprocess.Popen(_worker_argv(args, worker_dir, i, workers))
            started[i] = time.monotonic()

        for i in range(workers):
            spawn(i)
        log.info("supervisor %d: %d workers on %s:%d (pids %s)", os.getpid(), workers, args.host, args.port,
                 ", ".join(str(p.pid) for p in procs.values()))
        code = 0
        first_run = set(range(workers))  # a worker that fails before it ever ran long: a setup error
        while not (stopping or stop_asked()):
            for i, proc in list(procs.items()):
                rc = proc.poll()
                if rc is None:
                    if time.monotonic() - started[i] >= FAST_FAIL_S:
                        first_run.discard(i)
                    continue
                if i in first_run and rc != 0:
                    log.error("worker %d exited with %s at start (see its error above); stopping", i, rc)
                    stopping, code = True, 1
                    break
                fails[i] = fails[i] + 1 if time.monotonic() - started[i] < FAST_FAIL_S else 1
                if fails[i] >= FAST_FAILS:
                    log.error("worker %d failed %d times within %.0f s of starting (last exit %s); stopping",
                              i, fails[i], FAST_FAIL_S, rc)
                    stopping, code = True, 1
                    break
                log.warning("worker %d (pid %d) exited with %s; restarting it", i, proc.pid, rc)
                spawn(i)
            if not stopping:
                time.sleep(0.2)  # the supervisor's only job: a child's exit is seen within 0.2 s
        log.info("supervisor: draining %d workers", len(procs))
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # each drains its own calls for up to --grace-s
        for proc in procs.values():
            try:
                proc.wait(timeout=args.grace_s + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.info("supervisor: every worker has exited; bye")
        return code
