"""README's commands, top to bottom, as written, in a fresh copy of the repository (loopback only).

Every ```sh block runs, in order, in one bash session (so the quickstart's virtualenv stays active), except
blocks preceded by an HTML comment `<!-- not run: REASON -->`, which must give a reason. In the first block,
the second command is the test suite itself: it is checked to be exactly what .ci/run runs, not run again.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIMIT_S = 300  # the whole README, install included; the demo alone is about 25 s
BLOCK = re.compile(r"(?:<!-- not run: (?P<why>[^>]*?) -->\n)?```sh\n(?P<body>.*?)```", re.S)


def blocks(text: str) -> list[tuple[str, str | None]]:
    return [(m["body"], m["why"]) for m in BLOCK.finditer(text)]


def commands(body: str) -> list[str]:
    return [line for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def fresh_copy(dest: Path) -> Path:
    """The repository's tracked files as they are in the working tree: what a fresh clone holds."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def test_readme_opens_with_the_two_commands() -> None:
    first = commands(blocks((ROOT / "README.md").read_text())[0][0])
    assert first[0] == "python3 -m venv .venv && . .venv/bin/activate && pip install -q -e . && engine demo"
    ci = (ROOT / ".ci/run").read_text()
    suite = first[1].split(" && ", 2)[2]  # after creating and activating the venv
    assert suite.startswith("pip install -q -e '.[dev]' && ruff check . && ") and suite.endswith("pytest")
    assert suite in ci  # CI runs the very command README gives


def test_every_skipped_block_says_why() -> None:
    found = blocks((ROOT / "README.md").read_text())
    assert len(found) >= 6
    assert all(why is None or len(why.split()) >= 4 for _, why in found)


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_readme_commands_run_top_to_bottom(tmp_path: Path) -> None:
    repo = fresh_copy(tmp_path / "callstate")
    found = blocks((repo / "README.md").read_text())
    script = ["set -euo pipefail", "export NO_COLOR=1"]
    for i, (body, why) in enumerate(found):
        if why is not None:
            continue
        cmds = commands(body)
        if i == 0:
            cmds = cmds[:1]  # the second is the suite this test is part of (.ci/run runs it)
        for cmd in cmds:
            script += [f"echo '$ {cmd.replace(chr(39), '')}' >&2", cmd]
    with socket.socket() as s:  # the example webhook's port: free, so parallel runs never collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["SHIPMENT_API_URL"] = f"http://127.0.0.1:{port}/shipments"
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if "venv" not in p)
    proc = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        last = [line for line in err.splitlines() if line.startswith("$ ")][-1:]
        raise AssertionError(f"README's commands did not finish in {LIMIT_S} s; the last one started: {last}. "
                             "A command that runs until stopped needs `<!-- not run: REASON -->` before its "
                             "block (or `&` and a kill)") from None
    finally:
        with contextlib.suppress(ProcessLookupError):  # anything a command left running in the background
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-4000:]
    assert "engine replay CA" in out and "every effect identical" in out  # the demo
    assert "reproduced" in out and "checked 3 calls: every call reproduces" in out
    assert "tool lookup_shipment -> ok" in out
    assert (repo / "barge-in.html").exists() and (repo / "barge-in.jsonl").exists()


def test_readme_answers_what_a_newcomer_asks() -> None:
    text = (ROOT / "README.md").read_text()
    for needed in ("engine check", "engine stats", "engine export", "--timeline", "--html", "--set",
                   "--public-url", "--insecure-skip-signature", "POST https://YOUR-HOST/twiml", "X-Callstate-Signature",
                   "64 KiB", "verify_signature", "bench/README.md"):
        assert needed in text, needed
    for private in ("design.md", "the issue"):  # readers have neither
        assert private not in text, private
    assert "| figure | result |" not in text and "| figure | result |" in (ROOT / "bench/README.md").read_text()
