"""`engine call` end to end: a script, a real loopback webhook, the log, and `engine replay` on it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from callstate.cli import main
from engine import events as ev
from logstore.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent


class Webhook:
    """A shipment API on 127.0.0.1 in its own thread (engine call runs its own event loop)."""

    def __init__(self, delay_ms: int) -> None:
        self.delay_ms, self.requests = delay_ms, []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def lookup(request: web.Request) -> web.Response:
            self.requests.append(await request.json())
            await asyncio.sleep(self.delay_ms / 1000)
            return web.json_response({"status": "late", "eta": "Thursday"})

        async def up() -> None:
            app = web.Application()
            app.router.add_post("/shipments", lookup)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/shipments"
            self.ready.set()

        self.loop.run_until_complete(up())
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def webhook(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Webhook]:
    hook = Webhook(request.param)
    monkeypatch.setenv("SHIPMENT_API_URL", hook.url)
    yield hook
    hook.stop()


def run_call(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[list[ev.Event], str]:
    db = str(tmp_path / "calls.db")
    assert main(["call", str(ROOT / "scripts/shipment_status.call.yaml"), "--db", db, "--call-id", "c1"]) == 0
    out = capsys.readouterr().out
    store = SqliteStore(db, readonly=True)
    events = store.load("c1")
    store.close()
    assert main(["replay", "c1", "--db", db]) == 0
    assert "reproduced" in capsys.readouterr().out
    return events, out


@pytest.mark.parametrize("webhook", [1200], indirect=True)
def test_slow_webhook_gets_the_delay_message_and_its_result_is_spoken(webhook, tmp_path, capsys) -> None:
    events, out = run_call(tmp_path, capsys)
    assert webhook.requests == [{"tracking_number": "1Z999AA10123456784"}]
    result = next(e for e in events if isinstance(e, ev.ToolResult))
    assert result.ok and '"eta": "Thursday"' in result.body
    call = next(e for e in events if isinstance(e, ev.CallTool))
    assert 1200 <= result.t_ms - call.t_ms < 3000  # the webhook's real latency, carried into the log
    delay = [e for e in events if isinstance(e, ev.Speak) and e.purpose == "tool_message"]
    assert [(e.text, e.t_ms - call.t_ms) for e in delay] == [("Let me check that.", 800)]
    assert "It's running one day late" in out


@pytest.mark.parametrize("webhook", [50], indirect=True)
def test_fast_webhook_gets_no_delay_message(webhook, tmp_path, capsys) -> None:
    events, _ = run_call(tmp_path, capsys)
    assert len(webhook.requests) == 1
    assert not [e for e in events if isinstance(e, ev.Speak) and e.purpose == "tool_message"]
    assert any(isinstance(e, ev.Speak) and "Thursday by 8 pm" in e.text for e in events)


def test_replay_of_an_unknown_call_is_a_clear_error(tmp_path, capsys) -> None:
    db = tmp_path / "calls.db"
    SqliteStore(str(db)).close()
    assert main(["replay", "nope", "--db", str(db)]) == 1
    assert "no call 'nope'" in capsys.readouterr().err


def test_a_broken_script_is_a_clear_error(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("caller:\n  - say: hi\n    gap: 3\n")
    assert main(["call", str(bad), "--db", str(tmp_path / "x.db")]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:3:5 caller[0].gap: unknown key 'gap' (did you mean 'gap_ms'?)" in err and "Traceback" not in err
