"""Importable sample callables for tests/test_tools.py ("tests.toolfuncs:<name>")."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any


def add(a: int, b: int) -> dict[str, Any]:
    return {"sum": a + b, "thread": threading.current_thread().name}


async def greet(name: str) -> str:
    await asyncio.sleep(0)
    return f"hello {name}"  # not JSON: the runner encodes it as a JSON string


def json_text() -> str:
    return '{"already": "json"}'


def boom(**_: Any) -> None:
    raise KeyError("sk_live_hidden")  # the message must never reach the LLM


def blocking() -> int:
    time.sleep(0.5)
    return 1


blocking.timeout_ms = 100  # type: ignore[attr-defined]


def unserializable() -> object:
    return object()
