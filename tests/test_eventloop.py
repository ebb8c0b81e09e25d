"""callstate/eventloop.py (issue 15): uvloop when installed, the standard loop on request; the heap frozen."""

from __future__ import annotations

import asyncio
import gc
import importlib.util

import pytest

from callstate import eventloop


async def _loop_type() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_serve_runs_on_uvloop_when_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLSTATE_LOOP", raising=False)
    installed = importlib.util.find_spec("uvloop") is not None
    assert eventloop.loop_name() == ("uvloop" if installed else "asyncio")
    assert eventloop.run(_loop_type()).startswith("uvloop" if installed else "asyncio")


def test_callstate_loop_asyncio_keeps_the_standard_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLSTATE_LOOP", "asyncio")
    assert eventloop.loop_name() == "asyncio"
    assert eventloop.run(_loop_type()).startswith("asyncio")


def test_settle_gc_moves_the_start_up_heap_out_of_the_collectors_way(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLSTATE_GC", raising=False)
    try:
        eventloop.settle_gc()
        frozen = gc.get_freeze_count()
        assert frozen > 1000  # the imported modules' objects, at least
        gc.unfreeze()
        monkeypatch.setenv("CALLSTATE_GC", "default")
        eventloop.settle_gc()
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
