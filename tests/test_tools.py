"""adapters/tools.py against a real aiohttp server on loopback (port 0), plus Python callables."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from adapters.tools import SIGNATURE_HEADER, ToolRunner, sign, verify_signature
from engine.events import CallTool, ToolResult

SECRET = "whsec_topsecret"
AUTH = "Bearer tok_hidden"


@dataclass
class FakeServer:
    base: str = ""
    requests: list[str] = field(default_factory=list)
    peers: list[Any] = field(default_factory=list)
    slow_started: asyncio.Event = field(default_factory=asyncio.Event)
    slow_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    headers: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    srv = FakeServer()

    def record(request: web.Request) -> None:
        srv.requests.append(request.path)
        srv.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        srv.headers.append(dict(request.headers))

    async def echo(request: web.Request) -> web.Response:
        record(request)
        got = await request.json() if request.method == "POST" else dict(request.query)
        return web.json_response({"method": request.method, "got": got})

    async def slow(request: web.Request) -> web.Response:
        record(request)
        srv.slow_started.set()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            srv.slow_cancelled.set()  # the client dropped the connection
            raise
        return web.json_response({})

    async def fail(request: web.Request) -> web.Response:
        record(request)
        return web.Response(status=500, text='{"oops": true}')

    async def text(request: web.Request) -> web.Response:
        record(request)
        return web.Response(text="hello, not json")

    async def big(request: web.Request) -> web.StreamResponse:
        record(request)
        blob = b'"' + b"x" * (200 * 1024) + b'"'
        if request.query.get("chunked"):  # no Content-Length: the runner must stop reading by itself
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(0, len(blob), 8192):
                await resp.write(blob[i : i + 8192])
            await resp.write_eof()
            return resp
        return web.Response(body=blob, content_type="application/json")

    async def signed(request: web.Request) -> web.Response:
        record(request)
        payload = await request.text() if request.method == "POST" else request.rel_url.raw_query_string
        ok = verify_signature(SECRET, request.headers.get(SIGNATURE_HEADER, ""), payload, now=time.time())
        return web.json_response({"verified": ok}, status=200 if ok else 401)

    app = web.Application()
    for path, handler in {"/echo": echo, "/slow": slow, "/fail": fail, "/text": text, "/big": big,
                          "/signed": signed}.items():
        app.router.add_route("*", path, handler)
    # handler_cancellation: the handler is cancelled when the client drops the connection, so the
    # cancel test can see the request was really aborted.
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    srv.base = f"http://{host}:{port}"
    yield srv
    await runner.cleanup()


def hook(url: str, **kw: Any) -> SimpleNamespace:
    conf = {"method": "POST", "headers": {}, "timeout_ms": 3000, "cache_ttl_s": 0, "secret": None} | kw
    return SimpleNamespace(webhook=SimpleNamespace(url=url, **conf), function=None)


def func(target: str) -> SimpleNamespace:
    return SimpleNamespace(webhook=None, function=target)


@pytest.fixture
async def make_runner() -> AsyncIterator[Any]:
    runners: list[ToolRunner] = []

    def make(tools: dict[str, Any], **kw: Any) -> ToolRunner:
        runners.append(ToolRunner(tools, **kw))
        return runners[-1]

    yield make
    for r in runners:
        await r.close()


_seq = iter(range(10, 10_000))


async def run(runner: ToolRunner, name: str, arguments: str = "{}") -> ToolResult:
    effect = CallTool(t_ms=100, seq=next(_seq), name=name, arguments=arguments, tool_call_id="call_1")
    result = await runner.call(effect)
    assert (result.cause, result.name, result.tool_call_id) == (effect.seq, name, "call_1")
    json.loads(result.body)  # success or failure, the LLM always reads JSON
    if not result.ok:
        assert json.loads(result.body)["error"] == result.error
    return result


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- webhooks


async def test_post_sends_json_body_and_returns_the_response_text(server, make_runner):
    runner = make_runner({"echo": hook(server.base + "/echo", headers={"X-Api-Key": "k1"})})
    result = await run(runner, "echo", '{"date": "2025-03-04", "party": 2}')
    assert result.ok and result.error is None and not result.cached
    assert json.loads(result.body) == {"method": "POST", "got": {"date": "2025-03-04", "party": 2}}
    assert server.headers[0]["X-Api-Key"] == "k1"


async def test_get_sends_arguments_as_query_parameters(server, make_runner):
    runner = make_runner({"echo": hook(server.base + "/echo", method="GET")})
    result = await run(runner, "echo", '{"city": "Zürich & co", "n": 3, "ok": true}')
    got = {"city": "Zürich & co", "n": "3", "ok": "true"}
    assert json.loads(result.body) == {"method": "GET", "got": got}


async def test_slow_server_gives_timeout_near_timeout_ms(server, make_runner):
    runner = make_runner({"slow": hook(server.base + "/slow", timeout_ms=100)})
    start = time.monotonic()
    result = await run(runner, "slow")
    assert not result.ok and result.error == "timeout"
    assert json.loads(result.body) == {"error": "timeout", "detail": f"POST {server.base}/slow: no answer in 100 ms"}
    assert time.monotonic() - start < 2


@pytest.mark.parametrize(("path", "code"), [("/fail", "http_500"), ("/text", "not_json"),
                                            ("/big", "too_large"), ("/big?chunked=1", "too_large"),
                                            ("/missing", "http_404")])
async def test_bad_responses_become_error_codes(server, make_runner, path, code):
    runner = make_runner({"t": hook(server.base + path)})
    result = await run(runner, "t")
    assert (result.ok, result.error) == (False, code)
    assert len(result.body) < 200


async def test_connection_refused(make_runner):
    runner = make_runner({"t": hook(f"http://127.0.0.1:{refused_port()}/x")})
    assert (await run(runner, "t")).error == "connection"


async def test_cache_hit_makes_no_request_and_expires_on_the_injected_clock(server, make_runner):
    clock = SimpleNamespace(now=1000.0)
    runner = make_runner({"echo": hook(server.base + "/echo", cache_ttl_s=60)}, clock=lambda: clock.now)
    first = await run(runner, "echo", '{"a": 1, "b": 2}')
    second = await run(runner, "echo", '{"b":2,"a":1}')  # same arguments, other spelling
    assert (first.cached, second.cached, second.body) == (False, True, first.body)
    assert len(server.requests) == 1
    clock.now += 61
    third = await run(runner, "echo", '{"a": 1, "b": 2}')
    assert not third.cached and len(server.requests) == 2


async def test_failures_are_not_cached(server, make_runner):
    runner = make_runner({"t": hook(server.base + "/fail", cache_ttl_s=60)})
    await run(runner, "t")
    assert (await run(runner, "t")).error == "http_500" and len(server.requests) == 2


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_signature_verifies_on_the_server(server, make_runner, method):
    runner = make_runner({"t": hook(server.base + "/signed", method=method, secret=SECRET)})
    result = await run(runner, "t", '{"q": "a b", "n": 1}')
    assert json.loads(result.body) == {"verified": True}


async def test_wrong_secret_fails_verification(server, make_runner):
    runner = make_runner({"t": hook(server.base + "/signed", secret="whsec_other")})
    assert (await run(runner, "t", '{"q": 1}')).error == "http_401"


def test_verify_signature_rejects_tampering_and_stale_timestamps():
    header = sign(SECRET, '{"a":1}', 1_700_000_000)
    assert verify_signature(SECRET, header, '{"a":1}', now=1_700_000_100)
    assert not verify_signature(SECRET, header, '{"a":2}', now=1_700_000_100)
    assert not verify_signature(SECRET, header, '{"a":1}', now=1_700_000_301)
    assert not verify_signature("whsec_other", header, '{"a":1}', now=1_700_000_000)
    assert not verify_signature(SECRET, "garbage", '{"a":1}', now=1_700_000_000)


async def test_secrets_never_appear_in_results(server, make_runner):
    conf = {"secret": SECRET, "headers": {"Authorization": AUTH}, "timeout_ms": 100}
    runner = make_runner({
        "fail": hook(server.base + "/fail", **conf),
        "slow": hook(server.base + "/slow", **conf),
        "refused": hook(f"http://127.0.0.1:{refused_port()}/?key={SECRET}", **conf),
        "boom": func("tests.toolfuncs:boom"),
    })
    for name in ("fail", "slow", "refused", "boom"):
        result = await run(runner, name)
        assert not result.ok
        for secret in (SECRET, AUTH, "tok_hidden", "sk_live_hidden"):
            assert secret not in repr(result)


async def test_sequential_calls_reuse_one_connection(server, make_runner):
    runner = make_runner({"echo": hook(server.base + "/echo")})
    await run(runner, "echo", '{"n": 1}')
    await run(runner, "echo", '{"n": 2}')
    assert len(server.peers) == 2 and len(set(server.peers)) == 1


async def test_cancel_mid_request_aborts_it_and_leaves_no_tasks(server, make_runner):
    runner = make_runner({"slow": hook(server.base + "/slow")})
    before = asyncio.all_tasks()
    task = asyncio.create_task(runner.call(CallTool(t_ms=0, seq=3, name="slow", arguments="{}")))
    await asyncio.wait_for(server.slow_started.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(server.slow_cancelled.wait(), 2)  # the server saw the connection drop
    await runner.close()
    for _ in range(100):  # let the server's handler task finish unwinding
        if not asyncio.all_tasks() - before:
            break
        await asyncio.sleep(0.01)
    assert asyncio.all_tasks() - before == set()


async def test_flow_tool_models_work_duck_typed(server, make_runner):
    from engine.flow import Tool

    webhook = {"url": server.base + "/echo", "method": "GET"}
    tool = Tool.model_validate({"description": "d", "webhook": webhook})
    runner = make_runner({"echo": tool})
    assert json.loads((await run(runner, "echo", '{"x": "1"}')).body)["got"] == {"x": "1"}


# ------------------------------------------------------------------------------------- callables and input


async def test_sync_callable_runs_in_a_thread(make_runner):
    runner = make_runner({"add": func("tests.toolfuncs:add")})
    body = json.loads((await run(runner, "add", '{"a": 2, "b": 3}')).body)
    assert body["sum"] == 5 and body["thread"] != "MainThread"


@pytest.mark.parametrize(("target", "body"), [("tests.toolfuncs:greet", '"hello Ada"'),
                                              ("tests.toolfuncs:json_text", '{"already": "json"}')])
async def test_callable_results_are_json_encoded(make_runner, target, body):
    runner = make_runner({"f": func(target)})
    args = '{"name": "Ada"}' if target.endswith("greet") else "{}"
    result = await run(runner, "f", args)
    assert result.ok and result.body == body


@pytest.mark.parametrize(("target", "code", "detail"), [
    ("tests.toolfuncs:boom", "exception", "the function raised KeyError"),
    ("tests.toolfuncs:blocking", "timeout", "no answer in 100 ms"),  # its own timeout_ms attribute
    ("tests.toolfuncs:unserializable", "not_json", "the function returned object, not JSON data"),
    ("tests.toolfuncs:nope", "exception", "cannot load tests.toolfuncs:nope (AttributeError)"),
])
async def test_callable_failures(make_runner, target, code, detail):
    runner = make_runner({"f": func(target)})
    start = time.monotonic()
    result = await run(runner, "f")
    assert json.loads(result.body) == {"error": code, "detail": detail}
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("arguments", ["[1, 2]", "not json", '"a"', '{"a": 1, "c": 3}'])
async def test_bad_arguments(make_runner, arguments):
    runner = make_runner({"add": func("tests.toolfuncs:add")})
    assert (await run(runner, "add", arguments)).error == "bad_arguments"


async def test_unknown_tool(make_runner):
    result = await run(make_runner({}), "launch_rockets")
    assert result.error == "unknown_tool" and "launch_rockets" in result.body
