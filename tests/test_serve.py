"""`engine serve` as an operator meets it: refusals at start, health and metrics, bad frames from the
line, and a failure in one call that ends that call only."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import aiohttp
import pytest

from adapters.audio import load_fixture
from callstate.cli import main
from callstate.flows import load_flow
from callstate.providers import build_providers, missing_keys
from callstate.server import Server, start
from callstate.simcaller import CallerLine, SimCaller
from engine import events as ev
from logstore.sqlite import SqliteStore
from replay.reproduce import reproduce

ROOT = Path(__file__).resolve().parent.parent
LOCAL_FLOW = ROOT / "tests/data/local_call.yaml"


def test_serve_refuses_to_start_without_the_providers_keys(capsys, monkeypatch) -> None:
    for key in ("DEEPGRAM_API_KEY", "GROQ_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    assert main(["serve", "--flow", str(ROOT / "flows/shipment_status.yaml"), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "DEEPGRAM_API_KEY (for stt: deepgram)" in err and "GROQ_API_KEY (for llm: groq)" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("tts", ["{provider: playht}", "{provider: local, fallback: playht}"])
def test_serve_refuses_a_playht_flow_without_its_base_url_in_one_line(tmp_path: Path, capsys, monkeypatch,
                                                                       tts: str) -> None:
    """PlayHT's public endpoints are gone: such a flow would start and then fail every line."""
    monkeypatch.delenv("PLAYHT_BASE_URL", raising=False)
    for key in ("PLAYHT_API_KEY", "PLAYHT_USER_ID"):
        monkeypatch.setenv(key, "x")
    flow = tmp_path / "playht.yaml"
    flow.write_text(f"name: p\nstt: {{provider: local}}\nllm: {{provider: local}}\ntts: {tts}\n")
    assert main(["serve", "--flow", str(flow), "--port", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("error: tts: playht needs PLAYHT_BASE_URL: PlayHT's public API closed at the end of 2025; "
                   "set it to a PlayHT-compatible server")


def test_missing_keys_lists_each_variable_once_and_never_a_value() -> None:
    flow = load_flow(ROOT / "flows/shipment_status.yaml")
    assert missing_keys(flow, {"GROQ_API_KEY": "gsk-secret"}) == ["DEEPGRAM_API_KEY (for stt: deepgram)"]
    assert missing_keys(flow, {"GROQ_API_KEY": "x", "DEEPGRAM_API_KEY": "y"}) == []


def test_serve_refuses_an_invalid_flow_with_its_errors(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nllm: {provider: openai}\n")
    assert main(["serve", "--flow", str(bad), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "bad.yaml:2:" in err and "llm.provider" in err and "Traceback" not in err


async def _with_server(tmp_path: Path, body) -> None:  # type: ignore[no-untyped-def]
    flow = load_flow(LOCAL_FLOW)
    store = SqliteStore(str(tmp_path / "c.db"))
    server = Server(flow, build_providers(flow, {}), store, skip_signature=True)
    runner, port = await start(server)
    try:
        await body(server, port, store)
    finally:
        await runner.cleanup()
        store.close()


def test_health_and_metrics_after_a_call(tmp_path: Path) -> None:
    async def body(server: Server, port: int, store: SqliteStore) -> None:
        async with aiohttp.ClientSession() as http:
            health = await (await http.get(f"http://127.0.0.1:{port}/healthz")).json()
            assert health == {"ok": True, "active_calls": 0}
            caller = SimCaller(f"ws://127.0.0.1:{port}/media",
                               lines=[CallerLine(audio=load_fixture("shipment_1"), gap_ms=300)])
            await caller.run()
            while server.calls:
                await asyncio.sleep(0.05)
            text = await (await http.get(f"http://127.0.0.1:{port}/metrics")).text()
        assert 'callstate_calls_total{outcome="caller_hung_up"} 1' in text
        assert "callstate_active_calls 0" in text and "callstate_turns_total 1" in text
        assert "callstate_voice_to_voice_ms_count 1" in text
        assert "# TYPE callstate_engine_us histogram" in text

    asyncio.run(_with_server(tmp_path, body))


def test_bad_frames_are_logged_and_the_call_goes_on(tmp_path: Path) -> None:
    async def body(server: Server, port: int, store: SqliteStore) -> None:
        sid = "MZ" + "0" * 32

        def msg(event: str, **kw: object) -> str:
            return json.dumps({"event": event, "sequenceNumber": "1", "streamSid": sid, **kw})

        async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{port}/media") as ws:
            await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send_str(msg("start", start={
                "accountSid": "AC1", "callSid": "CA" + "1" * 32, "streamSid": sid, "tracks": ["inbound"],
                "customParameters": {}, "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                                        "channels": 1}}))
            await ws.send_str("{not json")
            await ws.send_str(msg("surprise"))
            await ws.send_str(msg("media", media={"track": "inbound", "chunk": "1", "timestamp": "0",
                                                  "payload": "***not base64***"}))
            await ws.send_str("x" * 1_000_000)
            payload = base64.b64encode(b"\xff" * 160).decode()
            for i in range(25):  # the line still works: audio after the bad frames is taken
                await ws.send_str(msg("media", media={"track": "inbound", "chunk": str(i + 2),
                                                      "timestamp": str(20 * i), "payload": payload}))
            await ws.send_str(msg("dtmf", dtmf={"track": "inbound_track", "digit": "5"}))
            await ws.send_str(msg("stop", stop={"accountSid": "AC1", "callSid": "CA" + "1" * 32}))
            await ws.receive(timeout=10)
        while server.calls:
            await asyncio.sleep(0.05)
        store.flush()
        (row,) = store.list_calls()
        log = store.load(row.call_id)
        notices = [e.detail for e in log if isinstance(e, ev.ProviderNotice) and e.what == "bad_frame"]
        assert len(notices) == 4 and "bad_json" in notices and "too_large" in notices
        assert [e.digit for e in log if isinstance(e, ev.Dtmf)] == ["5"]
        assert [e.reason for e in log if isinstance(e, ev.CallEnded)] == ["stop"]
        assert reproduce(load_flow(LOCAL_FLOW), log).ok

    asyncio.run(_with_server(tmp_path, body))


def test_a_failure_in_one_call_ends_that_call_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(server: Server, port: int, store: SqliteStore) -> None:
        real = server._on_step

        def on_step(call, event, effects, before, us):  # type: ignore[no-untyped-def]
            if call.call_id.endswith("1") and isinstance(event, ev.Transcript):
                raise RuntimeError("a bug in this call's code")
            real(call, event, effects, before, us)

        server._on_step = on_step  # type: ignore[method-assign]
        lines = [CallerLine(audio=load_fixture("shipment_1"), gap_ms=300),
                 CallerLine(audio=load_fixture("shipment_4"), gap_ms=300)]
        results = await asyncio.gather(*[
            SimCaller(f"ws://127.0.0.1:{port}/media", lines=lines, call_index=i, timeout_s=40).run()
            for i in (1, 2)])
        while server.calls:
            await asyncio.sleep(0.05)
        rows = {r.call_id[-1]: r for r in store.list_calls()}
        assert rows["1"].outcome == "error" and rows["2"].outcome == "caller_hung_up"
        assert results[0].server_closed  # the broken call was hung up after its fallback line
        assert results[1].lines[1].voice_to_voice_ms is not None  # the other call finished normally
        second = store.load(rows["2"].call_id)
        assert len([e for e in second if isinstance(e, ev.Respond)]) == 2

    asyncio.run(_with_server(tmp_path, body))


def test_a_masked_env_value_the_agent_reads_is_warned_at_start(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("GREET_TEXT", "Hello from the environment")
    monkeypatch.setenv("HOOK_TOKEN", "tok-1234567")
    flow_file = tmp_path / "f.yaml"
    flow_file.write_text("name: x\ngreeting: ${GREET_TEXT}\nllm: {provider: local}\nstt: {provider: local}\n"
                         "tts: {provider: local}\ntools:\n  t:\n    description: d\n    webhook:\n"
                         "      url: http://127.0.0.1:1/x\n      headers: {Authorization: \"Bearer ${HOOK_TOKEN}\"}\n")
    flow = load_flow(flow_file)
    with caplog.at_level("WARNING"):
        server = Server(flow, build_providers(flow, {}), SqliteStore(str(tmp_path / "c.db")), skip_signature=True)
    warned = [r.getMessage() for r in caplog.records if "masked in the log" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("flow greeting:")  # the webhook's header is no risk
    assert server.flow_record["greeting"] == "${GREET_TEXT}"
    server.store.close()
