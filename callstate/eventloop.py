"""How `engine serve` runs its event loop: uvloop when installed, and the start-up heap kept out of GC.

- ``run(main)``: ``uvloop`` (``pip install 'callstate[fast]'``) when it imports, else asyncio's own loop.
  ``CALLSTATE_LOOP=asyncio`` forces the standard loop (to compare, or to rule uvloop out of a problem).
- ``settle_gc()``: called once the server is up. Everything imported and built at start-up (SDK clients,
  pydantic schemas, the flow) lives as long as the process; ``gc.freeze()`` moves it to the permanent
  generation, so the collector stops re-walking it in every full collection on the hot path.
  ``CALLSTATE_GC=default`` leaves the collector as it is.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_name() -> str:
    """``uvloop`` or ``asyncio``: what ``run`` will use here."""
    if os.environ.get("CALLSTATE_LOOP", "auto") == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def settle_gc() -> None:
    if os.environ.get("CALLSTATE_GC", "freeze") == "default":
        return
    gc.collect()
    gc.freeze()
