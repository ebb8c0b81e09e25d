"""The log's writer thread: a store's writes run here, in order, so the event loop never waits on a disk or
a lock held by another process (issue 11: a 5 s SQLite lock froze every call in the process).

Rules:
- ``submit`` only queues (a deque append under a lock); the thread runs each write in submission order.
- A write that fails with ``retry_on`` (the store's StoreBusy: database locked, disk full) is retried
  with backoff, never dropped: the log waits, the calls do not. The stall is logged when it starts
  (after ``stall_log_s``), every ``repeat_log_s`` while it lasts, and when the writer has caught up.
- A permanent error (a duplicate row, a call that is not open) is logged with what was lost and counted.
- The queue is bounded by the events it holds: past ``max_events`` the writer is ``degraded`` and the
  server takes no new calls (calls in progress go on, and their events still queue: nothing is dropped).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from engine.store import StoreBusy

log = logging.getLogger("callstate.log")

MAX_EVENTS = 200_000  # ~100 MB of queued rows at worst; a busy server writes a few thousand a second


@dataclass
class WriterStats:
    written_events: int = 0
    lost_events: int = 0
    retries: int = 0
    stalls: int = 0


class LogWriter:
    def __init__(self, name: str, *, retry_on: type[Exception] = StoreBusy, max_events: int = MAX_EVENTS,
                 stall_log_s: float = 1.0, repeat_log_s: float = 10.0, retry_max_s: float = 1.0) -> None:
        self.name, self.max_events, self.retry_on = name, max_events, retry_on
        self.stall_log_s, self.repeat_log_s, self.retry_max_s = stall_log_s, repeat_log_s, retry_max_s
        self.stats = WriterStats()
        self._ops: deque[tuple[Callable[[], None], int, str]] = deque()
        self._queued_events = 0
        self._cv = threading.Condition()
        self._busy = False  # an op is running (taken off the deque but not done)
        self._stopping = False
        self._stalled_since: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"log writer {name}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------------------------- any thread

    def submit(self, op: Callable[[], None], events: int, what: str) -> None:
        with self._cv:
            if self._stopping:
                raise RuntimeError("the log writer is stopped")
            self._ops.append((op, events, what))
            self._queued_events += events
            self._cv.notify_all()

    @property
    def pending_events(self) -> int:
        return self._queued_events

    @property
    def stalled_s(self) -> float:
        since = self._stalled_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def degraded(self) -> bool:
        """True while the queue is over its bound: take no new calls until the log catches up."""
        return self._queued_events > self.max_events

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted write is done (or ``timeout``); True when the queue is empty."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self._ops or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def stop(self, timeout: float) -> int:
        """Write what is queued for up to ``timeout`` s, then stop; returns the events left unwritten."""
        self.drain(timeout)
        with self._cv:
            self._stopping = True
            left = self._queued_events
            self._cv.notify_all()
        self._thread.join(max(0.0, timeout) + 1.0)
        if left:
            self.stats.lost_events += left
            log.error("log %s: %d event(s) could not be written before shutdown (the database stayed "
                      "unavailable for %.0f s)", self.name, left, timeout)
        return left

    # ---------------------------------------------------------------------------------- the thread

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._ops and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                op, events, what = self._ops[0]
                self._busy = True
            try:
                done = self._attempt(op, events, what)
            finally:
                with self._cv:
                    self._busy = False
                    if done:
                        self._ops.popleft()
                        self._queued_events -= events
                    self._cv.notify_all()
            if not done:
                with self._cv:  # back off; a stop wakes us at once
                    if not self._stopping:
                        self._cv.wait(self._backoff())

    def _attempt(self, op: Callable[[], None], events: int, what: str) -> bool:
        started = time.monotonic()
        try:
            op()
        except self.retry_on as exc:
            self.stats.retries += 1
            now = time.monotonic()
            if self._stalled_since is None:  # the stall began when this attempt did (a busy wait is inside)
                self._stalled_since, self._last_log = started, None
                self.stats.stalls += 1
            waited = now - self._stalled_since
            if waited >= self.stall_log_s and (self._last_log is None or now - self._last_log >= self.repeat_log_s):
                self._last_log = now
                log.warning("log %s: writes waiting %.1f s (%s); %d event(s) queued; calls go on%s", self.name,
                            waited, exc, self._queued_events,
                            "; new calls refused until it catches up" if self.degraded else "")
            return False
        except Exception as exc:  # permanent: retrying would fail the same way
            self.stats.lost_events += events
            log.error("log %s: %s failed, %d event(s) not written: %s", self.name, what, events, exc)
            return True
        if self._stalled_since is not None:
            if self._last_log is not None:
                log.warning("log %s: caught up after %.1f s", self.name, time.monotonic() - self._stalled_since)
            self._stalled_since = None
        self.stats.written_events += events
        return True

    _last_log: float | None = None

    def _backoff(self) -> float:
        waited = self.stalled_s
        return min(self.retry_max_s, 0.02 + waited / 4)
