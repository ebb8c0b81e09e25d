"""`engine demo` as README's first command runs it: twice in one directory, watched line by line."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from tests.cli import ENGINE, ROOT, engine

FIRST = "CA" + "0" * 31 + "1"  # the CallSid every demo run used to send


def test_demo_run_again_is_a_new_call_streamed_as_it_happens(tmp_path: Path) -> None:
    db = tmp_path / "calls.db"
    # an earlier run's call in the same log (the id the demo's phone used to send every time)
    assert engine("call", str(ROOT / "scripts/barge_in.call.yaml"), "--db", str(db), "--call-id", FIRST,
                  cwd=tmp_path).returncode == 0
    proc = subprocess.Popen([ENGINE, "demo", "--db", str(db)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"})
    seen: list[tuple[float, str]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append((time.monotonic(), line.rstrip("\n")))
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err
    out = "\n".join(line for _, line in seen)
    call_id = re.search(r"^call (\S+) answered", out, re.M)
    assert call_id is not None, out
    cid = call_id[1]
    assert cid != FIRST and re.fullmatch(r"CA[0-9a-f]{32}", cid)
    # streamed: the first caller line was printed while the call went on, long before it ended
    first = next(t for t, line in seen if "caller: Hi, is my shipment delayed?" in line)
    ended = next(t for t, line in seen if "call ended" in line)
    assert ended - first > 10  # 19 s of phone time lie between them; printed at the end they'd be ms apart
    # its own transcript and verdict, in the words `engine calls` uses
    calls = engine("calls", "--db", str(db)).stdout
    row = next(line for line in calls.splitlines() if line.startswith(cid))
    assert row.split()[-1] == "caller_hung_up" and "call ended: caller_hung_up" in out
    assert FIRST in calls
    assert f"engine replay {cid} --db {db}: reproduced" in out
    assert "Let me check that." in out and "barge-in" in out
