"""Issue 16: the newcomer's path through the `engine` command line, run as the real command."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.cli import ENGINE, ROOT, engine

SID = "CA" + "0123456789abcdef" * 2  # a real CallSid's length: 34 characters


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("log") / "calls.db"
    done = engine("call", "scripts/barge_in.call.yaml", "--db", str(path), "--call-id", SID)
    assert done.returncode == 0, done.stderr
    return path


# item 2: --since is a time, or refused; checking nothing fails


@pytest.mark.parametrize(("cmd", "since"), [("check", "garbage"), ("calls", "12/01/2026"), ("stats", "last tuesday")])
def test_since_refuses_what_is_not_a_time(db: Path, cmd: str, since: str) -> None:
    done = engine(cmd, "--db", str(db), "--since", since)
    assert done.returncode == 2, done.stdout
    assert f"argument --since: {since!r} is not a time" in done.stderr
    assert "Traceback" not in done.stderr


def test_since_takes_dates_and_ages(db: Path) -> None:
    for since in ("1h", "yesterday", "2020-01-01T10:00:00Z"):
        done = engine("check", "--db", str(db), "--since", since)
        assert done.returncode == 0, done.stderr
        assert "checked 1 call: every call reproduces" in done.stdout


def test_check_of_nothing_fails_unless_allowed(db: Path) -> None:
    done = engine("check", "--db", str(db), "--since", "2099-01-01")
    assert done.returncode == 1
    assert "checked 0 calls: no call in" in done.stderr
    allowed = engine("check", "--db", str(db), "--since", "2099-01-01", "--allow-empty")
    assert allowed.returncode == 0 and "checked 0 calls" in allowed.stdout
    assert "0 calls" in engine("stats", "--db", str(db), "--since", "2099-01-01").stdout


# item 10: help, version, defaults, tables


def test_help_describes_every_command_and_version_is_known() -> None:
    done = engine("--help")
    assert done.returncode == 0
    for name, words in {"demo": "simulated", "serve": "live calls", "call": "scripted call", "check": "invariants",
                        "export": "JSON Lines", "graph": "node graph", "calls": "logged calls"}.items():
        assert any(line.split()[:1] == [name] and words in line for line in done.stdout.splitlines()), name
    version = engine("--version")
    assert version.returncode == 0 and version.stdout.startswith("callstate 0.")


def test_serve_help_shows_its_defaults() -> None:
    out = engine("serve", "--help").stdout
    for default in ("(default: 127.0.0.1)", "(default: 8080)", "calls.db", "(default: 30.0)"):
        assert default in out


def test_tables_fit_a_callsid_and_count_one_turn_as_one(db: Path) -> None:
    calls = engine("calls", "--db", str(db)).stdout.splitlines()
    head, row = calls[0].split(), calls[1].split()
    assert row[0] == SID and len(row) == len(head)  # the id is whole and every column still lines up
    assert calls[0].index("started") == calls[1].index(row[1])
    stats = engine("stats", "--db", str(db)).stdout
    assert "1 call, " in stats and "1 calls" not in stats
    assert any(line.startswith(SID + " ") for line in stats.splitlines())
    replay = engine("replay", SID, "--db", str(db), "--html", str(db.parent / "t.html")).stdout
    assert "turns)" in replay or "1 turn)" in replay
    assert "1 turns" not in replay


# item 11: exported files are calls too


def test_replay_check_and_timeline_read_an_exported_file(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "call.jsonl"
    assert engine("export", SID, str(out), "--db", str(db)).returncode == 0
    replay = engine("replay", str(out))
    assert replay.returncode == 0 and f"of call {SID}: every effect identical" in replay.stdout
    check = engine("check", str(out), str(ROOT / "tests/calls/barge_in_and_tool.jsonl"))
    assert check.returncode == 0 and "checked 2 calls: every call reproduces" in check.stdout
    timeline = engine("replay", str(out), "--timeline")
    assert timeline.returncode == 0 and f"call {SID} · flow" in timeline.stdout and "caller_hung_up" in timeline.stdout
    page = tmp_path / "call.html"
    assert engine("replay", str(out), "--html", str(page)).returncode == 0 and SID in page.read_text()
    whatif = engine("replay", str(out), "--set", "turn_taking.barge_in.min_words=3")
    assert whatif.returncode == 0 and "what-if" in whatif.stdout
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    bad = engine("replay", str(broken))
    assert bad.returncode == 1 and bad.stderr.startswith(f"error: {broken}:1:") and "Traceback" not in bad.stderr


# item 12: the flow's own graph


def test_graph_of_a_flow_is_its_node_graph() -> None:
    done = engine("graph", "flows/support_line.yaml")
    assert done.returncode == 0
    assert done.stdout.startswith("flowchart TD\n") and "stateDiagram" not in done.stdout
    assert '    n0_menu -->|"DTMF 1"| n1_billing' in done.stdout
    plain = engine("graph", "flows/shipment_status.yaml").stdout
    assert plain.startswith("flowchart TD\n") and '"lookup_shipment"' in plain
    assert engine("graph").stdout.startswith("stateDiagram-v2")
    both = engine("graph", "--only", "all", "flows/support_line.yaml").stdout
    assert both.startswith("stateDiagram-v2") and "flowchart TD" in both


# item 8: levels and formats


def test_log_options_and_json_lines(db: Path) -> None:
    done = engine("--log-level", "debug", "--log-format", "json", "check", "--db", str(db))
    assert done.returncode == 0
    # `engine check -q` takes the options after the command too
    assert engine("check", "-q", "--db", str(db)).returncode == 0
    bad = engine("--log-level", "loud", "calls", "--db", str(db))
    assert bad.returncode == 2 and "invalid choice: 'loud'" in bad.stderr
    json_lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert all({"ts", "level", "logger", "msg"} <= set(rec) for rec in json_lines)


# item 3: signatures checked by default; a 403 says which URL was checked and how to fix it

LOCAL_FLOW = str(ROOT / "tests/data/local_call.yaml")


def _no_token() -> dict[str, str]:
    twilio = ("TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID", "TWILIO_WEBHOOK_SHARED_KEY")
    return {k: v for k, v in os.environ.items() if k not in twilio}


def _serve(tmp_path: Path, env: dict[str, str], *extra: str, flow: str = LOCAL_FLOW,
           ) -> tuple[subprocess.Popen[str], Path, int | None]:
    """Start `engine serve`; returns the process, its log file and its port (None if it exited)."""
    log = tmp_path / f"serve.{time.monotonic_ns()}.log"
    with log.open("w") as err:
        proc = subprocess.Popen([ENGINE, "serve", "--flow", flow, "--port", "0", "--db",
                                 str(tmp_path / "calls.db"), *extra], cwd=tmp_path, stderr=err, text=True,
                                env={**env, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (m := re.search(r"on http://127\.0\.0\.1:(\d+)", log.read_text())) is not None:
            return proc, log, int(m[1])
        if proc.poll() is not None:
            return proc, log, None
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(log.read_text())


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_serve_refuses_to_start_without_the_twilio_token(tmp_path: Path) -> None:
    proc, log, port = _serve(tmp_path, _no_token())
    if port is not None:
        _stop(proc)
    assert port is None and proc.returncode == 1
    err = log.read_text()
    assert err.startswith("error: TWILIO_AUTH_TOKEN is not set") and "--insecure-skip-signature" in err
    proc, log, port = _serve(tmp_path, _no_token(), "--insecure-skip-signature")
    try:
        assert port is not None
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10).status == 200
    finally:
        _stop(proc)
    assert "--insecure-skip-signature: Twilio request signatures are NOT checked" in log.read_text()


def test_a_bad_signature_logs_the_url_it_was_checked_against(tmp_path: Path) -> None:
    proc, log, port = _serve(tmp_path, {**_no_token(), "TWILIO_AUTH_TOKEN": "t0ken-for-tests"})
    try:
        assert port is not None, log.read_text()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/twiml?x=1", data=b"CallSid=CA1",
                                         headers={"X-Twilio-Signature": "forged"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
    finally:
        _stop(proc)
    err = log.read_text()
    assert f"checked against 'http://127.0.0.1:{port}/twiml?x=1'" in err
    assert "--public-url https://" in err
    assert "t0ken-for-tests" not in err


# item 8: one line per call event worth seeing; known errors as one line


def test_a_taken_port_is_one_line_and_transitions_stays_quiet(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = engine("serve", "--flow", LOCAL_FLOW, "--port", str(port), "--insecure-skip-signature",
                      "--db", str(tmp_path / "c.db"), env=_no_token())
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) <= 3


async def test_serve_logs_a_call_in_a_few_json_lines(tmp_path: Path) -> None:
    from adapters.audio import load_fixture
    from callstate.simcaller import CallerLine, SimCaller

    dead = _free_port()  # the tool's server is down: the log must say which URL failed, and why
    flow = tmp_path / "flow.yaml"
    flow.write_text(f"""name: logged
greeting: Hello.
llm: {{provider: local}}
stt: {{provider: local}}
tts: {{provider: local}}
tools:
  lookup:
    description: Look it up.
    webhook: {{url: "http://127.0.0.1:{dead}/lookup?key=s3cret", timeout_ms: 1000}}
local:
  caller: ["Hi, is my shipment delayed?"]
  replies: [{{tool: lookup}}, {{text: Sorry about that.}}]
""")
    proc, log, port = _serve(tmp_path, _no_token(), "--insecure-skip-signature", "--log-format", "json",
                             flow=str(flow))
    try:
        assert port is not None, log.read_text()
        caller = SimCaller(f"ws://127.0.0.1:{port}/media", lines=[CallerLine(audio=load_fixture("shipment_1"))],
                           timeout_s=30)
        await caller.run()
        deadline = time.monotonic() + 20
        while "ended" not in log.read_text() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        _stop(proc)
    records = [json.loads(line) for line in log.read_text().splitlines()]  # every line is one JSON object
    assert not [r for r in records if r["logger"].startswith("transitions")]
    started = [r for r in records if "started" in r["msg"] and r["logger"] == "callstate.server"]
    assert len(started) == 1 and started[0]["call_id"].startswith("CA")
    failed = [r for r in records if r.get("tool") == "lookup"]
    assert len(failed) == 1 and failed[0]["level"] == "warning"
    assert f"tool lookup failed: connection: POST http://127.0.0.1:{dead}/lookup: could not reach" in failed[0]["msg"]
    assert "s3cret" not in log.read_text()
    assert len(records) < 15, [r["msg"] for r in records]


# item 5: tool parameters are JSON Schema, checked as such


def test_validate_checks_tool_parameters_as_json_schema(tmp_path: Path) -> None:
    flow = tmp_path / "booking.yaml"
    flow.write_text("""name: booking
tools:
  reserve_table:
    description: Book a table.
    parameters:
      type: object
      required: [party_size, time]
      properties:
        party_size: {type: integr}
        tme: {type: string}
        seats: {type: array, items: {type: object, properties: {n: {minimum: "one"}}}}
    webhook: {url: "http://127.0.0.1:9/book"}
""")
    done = engine("validate", "--strict", str(flow))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert f"{flow}:7:30 tools.reserve_table.parameters.required[1]: no property named 'time' " \
           "(did you mean 'tme'?)" in lines
    assert f"{flow}:9:22 tools.reserve_table.parameters.properties.party_size.type: no JSON Schema type " \
           "'integr' (did you mean 'integer'?)" in lines
    assert any("properties.seats.items.properties.n.minimum: not valid JSON Schema: 'one' is not of type 'number'"
               in line for line in lines), lines
    fixed = flow.read_text().replace("integr}", "integer}").replace("tme:", "time:").replace('"one"', "1")
    flow.write_text(fixed)
    assert engine("validate", "--strict", str(flow)).returncode == 0


# item 6: README's shipment example works as written; a failed tool names its URL and its error


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_shipment_example_calls_its_example_webhook(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}/shipments"
    env = {"SHIPMENT_API_URL": url}
    started = subprocess.run([sys.executable, str(ROOT / "examples/shipment_api.py"), "--detach"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=30, env={**os.environ, **env})
    assert started.returncode == 0, started.stderr
    pid = int((tmp_path / "shipment_api.pid").read_text())
    try:
        done = engine("call", str(ROOT / "scripts/shipment_status.call.yaml"), "--db", str(tmp_path / "c.db"),
                      env=env)
    finally:
        os.kill(pid, signal.SIGTERM)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    assert "tool lookup_shipment -> ok" in done.stdout and "agent (tool_message): Let me check that." in done.stdout


def test_a_failed_tool_names_its_url_and_error_everywhere(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there
    db = str(tmp_path / "c.db")
    done = engine("call", str(ROOT / "scripts/shipment_status.call.yaml"), "--db", db, "--call-id", "c1",
                  env={"SHIPMENT_API_URL": f"http://user:pw@127.0.0.1:{port}/shipments?key=s3cret"})
    why = f"connection: POST http://127.0.0.1:{port}/shipments: could not reach the tool's server " \
          "(ClientConnectorError: Connect call failed"
    assert f"warning: tool lookup_shipment failed: {why}" in done.stderr
    assert "1 of 1 tool call failed" in done.stdout.splitlines()[-2]
    timeline = engine("replay", "c1", "--db", db, "--timeline").stdout
    assert f"error {why}" in " ".join(timeline.split())
    for out in (done.stdout, done.stderr, timeline):
        assert "s3cret" not in out and "user:pw" not in out


# item 4: call scripts get the flow validator's treatment


def test_call_scripts_are_validated_like_flows(tmp_path: Path) -> None:
    script = tmp_path / "booking.call.yaml"
    script.write_text(f"""flow: {ROOT / "flows/appointment.yaml"}
caller:
  - say: I'd like a cleaning next Tuesday.
tools:
  check_availabilty: {{body: {{available: true}}}}
  book_appointment: {{body: {{booked: true}}}}
""")
    expected = f"{script}:5:3 tools.check_availabilty: no tool named 'check_availabilty' " \
               "(did you mean 'check_availability'?) in flow 'appointment'"
    done = engine("validate", str(script))
    assert done.returncode == 1 and expected in done.stdout.splitlines()
    call = engine("call", str(script), "--db", str(tmp_path / "c.db"))
    assert call.returncode == 1 and expected in call.stderr and "Traceback" not in call.stderr
    assert not (tmp_path / "c.db").exists() or "booking" not in engine("calls", "--db", str(tmp_path / "c.db")).stdout
    keys = tmp_path / "keys.yaml"  # no .call in the name: recognised by its `caller:`
    keys.write_text("caller:\n  - say: hi\n    gap: 300\nlantency: {stt_final_ms: 100}\n")
    done = engine("validate", str(keys))
    assert done.returncode == 1
    assert done.stdout.splitlines() == [f"{keys}:3:5 caller[0].gap: unknown key 'gap' (did you mean 'gap_ms'?)",
                                        f"{keys}:4:1 lantency: unknown key 'lantency' (did you mean 'latency'?)"]
    good = engine("validate", "scripts/appointment.call.yaml", "flows/appointment.yaml")
    assert good.returncode == 0
    assert good.stdout.splitlines() == ["ok  scripts/appointment.call.yaml (call script, flow flows/appointment.yaml)",
                                        "ok  flows/appointment.yaml"]


# item 7: a tool turn's waterfall shows the tool call, the delay message and the LLM's second pass, and adds up


def test_a_tool_turns_waterfall_adds_up_to_voice_to_voice(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    assert engine("call", "scripts/appointment.call.yaml", "--db", db, "--call-id", "ap").returncode == 0
    timeline = engine("replay", "ap", "--db", db, "--timeline").stdout
    head = next(line for line in timeline.splitlines() if line.startswith("── turn 1 "))
    m = re.search(r"voice to voice (\d+) ms = (.*?); the answer at (\d+) ms = \+ (.*?) ·", head)
    assert m is not None, head
    path = dict(re.findall(r"([a-z ,]+?) (\d+)(?: \+ |$)", m[2]))
    answer = dict(re.findall(r"([a-z ,]+?) (\d+)(?: \+ |$)", m[4]))
    assert sum(map(int, path.values())) == int(m[1])
    assert sum(map(int, answer.values())) == int(m[3]) - int(m[1])
    assert {"llm tool call", "tool, until the delay message", "tts first byte"} <= set(path), path
    assert {"tool", "llm first token", "first clause", "tts first byte"} <= set(answer), answer
    page = tmp_path / "ap.html"
    assert engine("replay", "ap", "--db", db, "--html", str(page)).returncode == 0
    text = page.read_text()
    section = text[text.index('id="turn-1"'):text.index('id="turn-2"')]
    bars = re.findall(r'data-part="(\w+)" data-ms="(\d+)"', section)
    keys = [k for k, _ in bars]
    v2v = keys.index("voice_to_voice_ms")
    assert sum(int(ms) for _, ms in bars[:v2v]) == int(bars[v2v][1]) == int(m[1])
    assert {"llm_tool_call_ms", "tool_wait_ms", "tool_run_ms", "llm_first_token_ms", "answer_ms"} <= set(keys)


# item 13: every property of `engine schema` has a description, so editors show it


def test_every_schema_property_has_a_description() -> None:
    done = engine("schema")
    schema = json.loads(done.stdout)
    found: list[str] = []
    missing: list[str] = []

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for name, spec in (node.get("properties") or {}).items():
                found.append(f"{path}.{name}")
                if not isinstance(spec, dict) or not spec.get("description"):
                    missing.append(f"{path}.{name}")
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for value in node:
                walk(value, path)

    walk(schema, "")
    assert len(found) > 100 and missing == []
    assert schema["$defs"]["Webhook"]["properties"]["timeout_ms"]["description"].startswith("No answer in this long")


def test_demo_on_a_log_a_server_holds_is_one_clear_line(tmp_path: Path) -> None:
    proc, log, port = _serve(tmp_path, _no_token(), "--insecure-skip-signature")
    try:
        assert port is not None, log.read_text()
        done = engine("demo", "--db", str(tmp_path / "calls.db"), timeout=90)
    finally:
        _stop(proc)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: {tmp_path / 'calls.db'} is in use by pid {proc.pid}: engine serve")
