"""A server's lease on the shared log: renewed on a thread, with a sweep that ends calls of lapsed owners.

Ownership by lease (engine/store.py) replaces "mark abandoned at start": an instance renews its lease every
third of its length; every sweep (any instance, one idempotent statement) marks abandoned the open calls
whose owner's lease has lapsed, so a host killed with -9 has its calls ended by the others within about
``lease_s * 4 / 3``. The keeper has its own store (its own connection): it never touches the one the call
tasks write through, and a slow database never stalls the event loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from engine.store import Store

log = logging.getLogger("callstate.lease")


class LeaseKeeper:
    def __init__(self, open_store: Callable[[], Store], lease_s: float) -> None:
        self._open, self.lease_s = open_store, lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        store = self._open()
        try:
            while True:
                try:
                    store.renew_lease(self.lease_s)
                    ended = store.mark_abandoned()
                except Exception as exc:  # the database is away: keep trying; our calls go on meanwhile
                    log.warning("lease renewal failed (%s); retrying", exc)
                    ended = []
                if ended:
                    log.warning("%d call(s) whose owner's lease lapsed marked abandoned: %s", len(ended),
                                ", ".join(ended[:10]))
                if self._stop.wait(self.lease_s / 3):
                    break
            store.release_lease()  # a clean exit: nothing of ours is left open, no need to wait for a lapse
        except Exception as exc:
            log.warning("could not release the lease (%s); it lapses in %.0f s", exc, self.lease_s)
        finally:
            store.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
