"""Every benchmark runs at its --tiny size and says what it measured (a smoke test: no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: bench script -> a line its output must hold (bench/vad_accuracy.py is exercised by tests/test_vad.py)
BENCHES = {
    "replay_speed": "x real time",
    "log_store": "events/s appended and written",
    "v2v": "engine-added = v2v - 450 ms",
    "hops": "us CPU per request",
    "budget": "target p50 < 450",
    "barge_in": "input queued -> clear handed to the socket",
    "call_memory": "MB per call",
    "tts_hop": "hop p50 ratio",
}


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_each_benchmark_runs_at_its_tiny_size(name: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), "--tiny"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert BENCHES[name] in done.stdout, done.stdout[-3000:]
    assert "timed out" not in done.stdout and "unanswered" not in done.stdout, done.stdout[-3000:]
