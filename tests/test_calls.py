"""Every exported call under tests/calls/ replays exactly and keeps every invariant.

Add one: `engine export CALL_ID tests/calls/NAME.jsonl --db calls.db` (see tests/callhelper.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.callhelper import CALLS, assert_call_reproduces

FILES = sorted(CALLS.glob("*.jsonl"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_logged_call_reproduces(path: Path) -> None:
    assert_call_reproduces(path)


def test_there_are_logged_calls() -> None:
    assert FILES, f"no exported calls in {CALLS}"
