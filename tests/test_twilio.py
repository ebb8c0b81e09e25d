"""adapters/twilio.py: the codec on recorded frames, the app on loopback (the test plays Twilio), REST on a fake."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from twilio.http import AsyncHttpClient
from twilio.http.response import Response
from twilio.request_validator import HMAC_SHA256, RequestValidator

from adapters.twilio import (
    CallInfo,
    Decoded,
    Signatures,
    TwilioPhone,
    TwilioRest,
    create_app,
    decode,
    encode_clear,
    encode_mark,
    encode_media,
    url_variants,
)
from engine.events import CallEnded, Dtmf, Input, PlaybackMark, ProviderNotice
from tests.fakes import wait_for

TOKEN = "tw_FAKE_AUTH_TOKEN_4242"
ACCOUNT = "AC" + "a" * 32
CALL = "CA" + "c" * 32
STREAM = "MZ" + "d" * 32
PUBLIC = "https://agent.example.com"
FRAME = bytes(range(160))

# ---------------------------------------------------------------------------------------------- recorded frames
# As Twilio sends them (reference 1.2): strings for counters, base64 payloads, the stream sid everywhere.

CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'
START = json.dumps({
    "event": "start", "sequenceNumber": "1", "streamSid": STREAM,
    "start": {"accountSid": ACCOUNT, "callSid": CALL, "streamSid": STREAM, "tracks": ["inbound"],
              "customParameters": {"From": "+15550100", "script": "s1"},
              "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})


def media(payload: bytes | str, chunk: int = 1, **over: Any) -> str:
    b64 = payload if isinstance(payload, str) else base64.b64encode(payload).decode()
    body = {"track": "inbound", "chunk": str(chunk), "timestamp": str((chunk - 1) * 20), "payload": b64, **over}
    return json.dumps({"event": "media", "sequenceNumber": str(chunk + 1), "streamSid": STREAM, "media": body})


def start_with(**fields: Any) -> str:
    msg = json.loads(START)
    msg["start"].update(fields)
    return json.dumps(msg)


DTMF = json.dumps({"event": "dtmf", "sequenceNumber": "7", "streamSid": STREAM,
                   "dtmf": {"track": "inbound_track", "digit": "5"}})
MARK = json.dumps({"event": "mark", "sequenceNumber": "9", "streamSid": STREAM, "mark": {"name": "utt-3"}})
STOP = json.dumps({"event": "stop", "sequenceNumber": "120", "streamSid": STREAM,
                   "stop": {"accountSid": ACCOUNT, "callSid": CALL}})

INFO = CallInfo(call_sid=CALL, stream_sid=STREAM, account_sid=ACCOUNT,
                params={"From": "+15550100", "script": "s1"})
GOOD = [
    (CONNECTED, Decoded("connected")),
    (START, Decoded("start", info=INFO)),
    (media(FRAME, chunk=3), Decoded("media", payload=FRAME, chunk=3, timestamp=40)),
    (DTMF, Decoded("dtmf", digit="5")),
    (MARK, Decoded("mark", name="utt-3")),
    (STOP, Decoded("stop")),
    (start_with(customParameters={"n": 7}), Decoded("start", info=CallInfo(
        call_sid=CALL, stream_sid=STREAM, account_sid=ACCOUNT, params={"n": "7"}))),
]
BAD = [
    ("{not json", "bad_json"),
    ("[" * 60_000, "bad_json"),
    ('["media"]', "not_object"),
    ('"media"', "not_object"),
    ('{"sequenceNumber": "1"}', "missing_field"),
    ('{"event": 42}', "bad_field"),
    ('{"event": "transcript", "streamSid": "MZ1"}', "unknown_event"),
    (media("!!not-base64!!"), "bad_base64"),
    (media("AAA"), "bad_base64"),  # bad padding
    (media("é" * 4), "bad_base64"),
    (media(""), "empty_payload"),
    (json.dumps({"event": "media", "streamSid": STREAM, "media": {"chunk": "1", "timestamp": "0"}}), "missing_field"),
    (media(FRAME, timestamp="soon"), "bad_field"),
    (json.dumps({"event": "media", "streamSid": STREAM, "media": "AAAA"}), "missing_field"),
    (json.dumps({"event": "mark", "streamSid": STREAM, "mark": {}}), "missing_field"),
    (json.dumps({"event": "mark", "streamSid": STREAM, "mark": {"name": 3}}), "bad_field"),
    (json.dumps({"event": "dtmf", "streamSid": STREAM, "dtmf": {"digit": "x"}}), "bad_field"),
    (json.dumps({"event": "dtmf", "streamSid": STREAM, "dtmf": {"digit": "12"}}), "bad_field"),
    (start_with(mediaFormat={"encoding": "audio/l16", "sampleRate": 16000, "channels": 1}), "wrong_media_format"),
    (start_with(mediaFormat={"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2}), "wrong_media_format"),
    (start_with(mediaFormat={"encoding": "audio/x-mulaw", "sampleRate": True, "channels": 1}), "bad_field"),
    (start_with(customParameters=["a"]), "bad_field"),
    (json.dumps({"event": "start", "streamSid": STREAM, "start": {"callSid": CALL}}), "missing_field"),
    (media(b"\xff" * 60_000), "too_large"),
]


@pytest.mark.parametrize(("text", "expected"), GOOD, ids=[e.kind for _, e in GOOD])
def test_decode_recorded_frames(text: str, expected: Decoded) -> None:
    assert decode(text) == expected


@pytest.mark.parametrize(("text", "reason"), BAD, ids=[f"{r}-{i}" for i, (_, r) in enumerate(BAD)])
def test_decode_bad_frames_never_raise(text: str, reason: str) -> None:
    got = decode(text)
    assert (got.kind, got.reason) == ("bad", reason)


def test_decode_non_text_is_bad() -> None:
    assert decode(b"{}").reason == "not_text"  # type: ignore[arg-type]


def test_encoders_write_what_twilio_reads() -> None:
    assert json.loads(encode_media(STREAM, FRAME)) == {
        "event": "media", "streamSid": STREAM, "media": {"payload": base64.b64encode(FRAME).decode()}}
    assert json.loads(encode_mark(STREAM, "utt-1")) == {"event": "mark", "streamSid": STREAM, "mark": {"name": "utt-1"}}
    assert json.loads(encode_clear(STREAM)) == {"event": "clear", "streamSid": STREAM}


# ---------------------------------------------------------------------------------------------- loopback rig


class FakeCall:
    """Stands in for engine/runtime.py's LiveCall: records what the bridge hands it."""

    def __init__(self, info: CallInfo, phone: TwilioPhone) -> None:
        self.info, self.phone = info, phone
        self.frames: list[bytes] = []
        self.events: list[Input] = []
        self.ended = asyncio.Event()

    def audio_in(self, mulaw: bytes) -> None:
        self.frames.append(mulaw)

    def emit(self, event: Input) -> None:
        self.events.append(event)
        if isinstance(event, CallEnded):
            self.ended.set()

    async def wait(self) -> None:
        await self.ended.wait()

    def of(self, cls: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]


class Calls:
    """The ``on_call`` callback: keeps every call it was given."""

    def __init__(self) -> None:
        self.calls: list[FakeCall] = []

    async def __call__(self, info: CallInfo, phone: TwilioPhone) -> FakeCall:
        self.calls.append(FakeCall(info, phone))
        return self.calls[-1]


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def twilio_side(calls: Calls, *, headers: dict[str, str] | None = None, start: bool = True,
                      **app_kw: Any) -> AsyncIterator[tuple[aiohttp.ClientWebSocketResponse, Calls]]:
    """Our app on loopback and a socket to it, acting as Twilio (``connected`` + ``start`` already sent)."""
    app_kw.setdefault("auth_token", None)
    async with serve(create_app(on_call=calls, **app_kw)) as host, aiohttp.ClientSession() as s, \
            s.ws_connect(f"ws://{host}/media", headers=headers or {}) as ws:
        if start:
            await ws.send_str(CONNECTED)
            await ws.send_str(START)
            await wait_for(lambda: calls.calls)
        yield ws, calls


async def read_until(ws: aiohttp.ClientWebSocketResponse, pred: Any, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """Messages our server sent, up to and including the first one matching ``pred``."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout_s):
        while True:
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            got.append(json.loads(msg.data))
            if pred(got[-1]):
                return got


def kinds(msgs: list[dict[str, Any]]) -> list[str]:
    return [m["event"] if m["event"] != "mark" else f"mark:{m['mark']['name']}" for m in msgs]


# ---------------------------------------------------------------------------------------------- /twiml


async def post_twiml(host: str, *, query: str = "", form: dict[str, str] | None = None,
                     headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(status, content type, body) of a POST to /twiml, as Twilio's voice webhook makes it."""
    async with aiohttp.ClientSession() as s, s.post(f"http://{host}/twiml{query}", data=form or {},
                                                    headers=headers or {}) as resp:
        return resp.status, resp.content_type, await resp.text()


FORM = {"CallSid": CALL, "From": "+15550100", "To": "+15550199", "AccountSid": ACCOUNT, "CallStatus": "ringing"}


def stream_of(xml: str) -> tuple[str, dict[str, str]]:
    root = ET.fromstring(xml)
    assert root.tag == "Response"
    (connect,) = list(root)
    assert connect.tag == "Connect"  # bidirectional: <Start><Stream> could not play audio back (reference 1.1)
    (stream,) = list(connect)
    assert stream.tag == "Stream"
    return stream.get("url", ""), {p.get("name", ""): p.get("value", "") for p in stream}


async def test_twiml_connects_a_stream_to_public_url_with_parameters() -> None:
    async with serve(create_app(on_call=Calls(), auth_token=None, public_url=PUBLIC + "/")) as host:
        status, content_type, xml = await post_twiml(host, query="?script=shipment&lang=en", form=FORM)
    assert (status, content_type) == (200, "text/xml")
    url, params = stream_of(xml)
    assert url == "wss://agent.example.com/media"
    assert params == {"script": "shipment", "lang": "en", "CallSid": CALL, "From": "+15550100", "To": "+15550199"}


@pytest.mark.parametrize(("headers", "expected"), [
    ({"X-Forwarded-Host": "abc.ngrok.app", "X-Forwarded-Proto": "https"}, "wss://abc.ngrok.app/media"),
    ({"X-Forwarded-Host": "abc.ngrok.app, internal:8080", "X-Forwarded-Proto": "https, http"},
     "wss://abc.ngrok.app/media"),
    ({"X-Forwarded-Host": "abc.ngrok.app", "X-Forwarded-Proto": "http"}, "ws://abc.ngrok.app/media"),
    ({"Host": "agent.local:8080"}, "ws://agent.local:8080/media"),
])
async def test_twiml_host_from_proxy_headers(headers: dict[str, str], expected: str) -> None:
    async with serve(create_app(on_call=Calls(), auth_token=None, trusted_proxies=frozenset({"127.0.0.1"}))) as host:
        _, _, xml = await post_twiml(host, form=FORM, headers=headers)
    assert stream_of(xml)[0] == expected


async def test_twiml_escapes_parameter_values() -> None:
    async with serve(create_app(on_call=Calls(), auth_token=None, public_url=PUBLIC)) as host:
        _, _, xml = await post_twiml(host, form={**FORM, "From": '"><Hangup/>'})
    assert stream_of(xml)[1]["From"] == '"><Hangup/>'


# ---------------------------------------------------------------------------------------------- signatures


def sign(url: str, params: dict[str, str] | None = None) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(url, params or {})}


@pytest.mark.parametrize(("headers", "status"), [
    (sign(PUBLIC + "/twiml?script=s1", FORM), 200),
    ({}, 403),
    (sign(PUBLIC + "/twiml?script=s1", {**FORM, "From": "+19990000"}), 403),  # params tampered
    (sign(PUBLIC + "/twiml?script=s2", FORM), 403),  # query tampered
    ({"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}, 403),
])
async def test_twiml_signature(headers: dict[str, str], status: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with serve(create_app(on_call=Calls(), auth_token=TOKEN, public_url=PUBLIC)) as host:
        got, _, _ = await post_twiml(host, query="?script=s1", form=FORM, headers=headers)
    assert got == status
    assert TOKEN not in caplog.text


async def test_twiml_signature_rebuilt_from_proxy_headers() -> None:
    proxy = {"X-Forwarded-Host": "abc.ngrok.app", "X-Forwarded-Proto": "https"}
    async with serve(create_app(on_call=Calls(), auth_token=TOKEN, trusted_proxies=frozenset({"127.0.0.1"}))) as host:
        ok = await post_twiml(host, form=FORM, headers={**proxy, **sign("https://abc.ngrok.app/twiml", FORM)})
        bad = await post_twiml(host, form=FORM, headers={**proxy, **sign(f"http://{host}/twiml", FORM)})
    assert (ok[0], bad[0]) == (200, 403)


async def upgrade(headers: dict[str, str], ok: bool, **app_kw: Any) -> None:
    """Open /media as Twilio would: accepted (the call starts) or refused with 403 before the upgrade."""
    calls = Calls()
    async with serve(create_app(on_call=calls, **app_kw)) as host, aiohttp.ClientSession() as s:
        if ok:
            async with s.ws_connect(f"ws://{host}/media", headers=headers) as ws:
                await ws.send_str(CONNECTED)
                await ws.send_str(START)
                await wait_for(lambda: calls.calls)
        else:
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:  # refused before the upgrade
                await s.ws_connect(f"ws://{host}/media", headers=headers)
            assert e.value.status == 403


@pytest.mark.parametrize(("headers", "ok"), [
    (sign("wss://agent.example.com/media"), True),
    ({}, False),
    (sign("wss://evil.example.com/media"), False),
    (sign("wss://agent.example.com/media", {"x": "y"}), False),
])
async def test_media_upgrade_signature(headers: dict[str, str], ok: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await upgrade(headers, ok, auth_token=TOKEN, public_url=PUBLIC)
    assert TOKEN not in caplog.text


async def test_media_signature_behind_proxy_uses_forwarded_host() -> None:
    proxy = {"X-Forwarded-Host": "abc.ngrok.app", "X-Forwarded-Proto": "https"}
    async with twilio_side(Calls(), headers={**proxy, **sign("wss://abc.ngrok.app/media")}, auth_token=TOKEN,
                           trusted_proxies=frozenset({"127.0.0.1"})) as (_, c):
        assert c.calls[0].info.call_sid == CALL


async def test_skip_signature_lets_unsigned_requests_through() -> None:
    calls = Calls()
    async with serve(create_app(on_call=calls, auth_token=TOKEN, skip_signature=True)) as host:
        assert (await post_twiml(host, form=FORM))[0] == 200
    async with twilio_side(calls, auth_token=TOKEN, skip_signature=True) as (_, c):
        assert c.calls


# Webhook Rules (HMAC-SHA256 with a SharedKey) and ports. Every vector is computed by the twilio SDK's own
# RequestValidator.compute_signature (request_validator.py), never by our code.
SHARED = "webhooks_sharedkey_SECRET_77"
RULES = {"X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_abc123,algorithm=HMAC_SHA256"}


def sign256(url: str, params: dict[str, str] | None = None, key: str = SHARED) -> dict[str, str]:
    sig = RequestValidator(key).compute_signature(url, params or {}, algorithm=HMAC_SHA256)
    return {"X-Twilio-Signature": sig, **RULES}


@pytest.mark.parametrize(("headers", "status"), [
    (sign256(PUBLIC + "/twiml?script=s1", FORM), 200),
    (sign256(PUBLIC + ":443/twiml?script=s1", FORM), 200),  # explicit port, signed as configured
    (sign256(PUBLIC + "/twiml?script=s1", {**FORM, "From": "+19990000"}), 403),  # params tampered
    (sign256(PUBLIC + "/twiml?script=s1", FORM, key=TOKEN), 403),  # SHA-256 keyed with the auth token
    ({**sign(PUBLIC + "/twiml?script=s1", FORM), **RULES}, 403),  # a SHA-1 signature claiming SHA-256
    ({**sign256(PUBLIC + "/twiml?script=s1", FORM), "X-Twilio-Webhooks-Signature-Settings": "algorithm=MD5"}, 403),
    ({"X-Twilio-Signature": "sig\u00e9n\u00e9", **RULES}, 403),  # not ASCII: refused, not a 500
    (sign(PUBLIC + "/twiml?script=s1", FORM), 200),  # no settings header: the auth token's SHA-1 still works
])
async def test_twiml_webhook_rules_signature(headers: dict[str, str], status: int,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with serve(create_app(on_call=Calls(), auth_token=TOKEN, shared_key=SHARED, public_url=PUBLIC)) as host:
        got, _, _ = await post_twiml(host, query="?script=s1", form=FORM, headers=headers)
    assert got == status
    assert TOKEN not in caplog.text and SHARED not in caplog.text


async def test_a_webhook_rules_request_without_a_shared_key_is_refused_saying_which_variable(
        caplog: pytest.LogCaptureFixture) -> None:
    async with serve(create_app(on_call=Calls(), auth_token=TOKEN, public_url=PUBLIC)) as host:
        got, _, _ = await post_twiml(host, query="?script=s1", form=FORM,
                                     headers=sign256(PUBLIC + "/twiml?script=s1", FORM))
    assert got == 403
    assert "HMAC_SHA256 signature, but TWILIO_WEBHOOK_SHARED_KEY is not set" in caplog.text


@pytest.mark.parametrize(("public", "signed_url", "ok"), [
    (PUBLIC, "wss://agent.example.com:443/media", True),  # explicit :443 on wss
    (PUBLIC + ":443", "wss://agent.example.com/media", True),  # implicit, the Host naming the port
    (PUBLIC, "wss://agent.example.com/media", True),
    (PUBLIC, "wss://agent.example.com:80/media", False),  # not the port wss means
    (PUBLIC, "wss://agent.example.com:8443/media", False),
    ("http://agent.example.com", "ws://agent.example.com:80/media", True),
])
@pytest.mark.parametrize("rules", [False, True])
async def test_media_upgrade_signature_ports(public: str, signed_url: str, ok: bool, rules: bool) -> None:
    headers = sign256(signed_url) if rules else sign(signed_url)
    await upgrade(headers, ok, auth_token=TOKEN, shared_key=SHARED, public_url=public)


def test_url_variants_name_the_default_port_of_each_scheme() -> None:
    assert url_variants("wss://a.example/media") == ["wss://a.example/media", "wss://a.example:443/media"]
    assert url_variants("https://a.example:443/t?x=1") == ["https://a.example/t?x=1", "https://a.example:443/t?x=1"]
    assert url_variants("ws://a.example/m") == ["ws://a.example/m", "ws://a.example:80/m"]
    assert url_variants("wss://a.example:8443/m") == ["wss://a.example:8443/m"]
    assert "SECRET" not in repr(Signatures(TOKEN, SHARED)) and TOKEN not in repr(Signatures(TOKEN, SHARED))


# ---------------------------------------------------------------------------------------------- the stream


async def test_stream_routes_audio_and_events_in_order() -> None:
    frames = [bytes([i]) * 160 for i in range(1, 6)]
    async with twilio_side(Calls()) as (ws, calls):
        call = calls.calls[0]
        assert call.info == INFO and call.phone.stream_sid == STREAM and call.phone.call_sid == CALL
        for i, f in enumerate(frames, 1):
            await ws.send_str(media(f, chunk=i))
        await ws.send_str(DTMF)
        await ws.send_str(MARK)
        await ws.send_str(STOP)
        await wait_for(lambda: call.ended.is_set())
        assert call.frames == frames
        assert call.events == [Dtmf(t_ms=0, digit="5"), PlaybackMark(t_ms=0, name="utt-3"),
                               CallEnded(t_ms=0, reason="stop")]
        msg = await asyncio.wait_for(ws.receive(), 2)  # handle.wait() returned: the server closes
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_socket_closed_without_stop_is_an_event() -> None:
    async with twilio_side(Calls()) as (ws, calls):
        await ws.send_str(media(FRAME))
        await ws.close()
        await wait_for(lambda: calls.calls[0].ended.is_set())
    assert calls.calls[0].events == [CallEnded(t_ms=0, reason="ws_closed_without_stop")]


async def test_bad_frames_after_start_are_notices_and_the_call_goes_on() -> None:
    async with twilio_side(Calls(), max_message_bytes=2 * 1024 * 1024) as (ws, calls):
        call = calls.calls[0]
        await ws.send_str(media(b"\x01" * 160, chunk=1))
        await ws.send_str("{not json")
        await ws.send_str('{"event":"transcript","streamSid":"MZ1"}')
        await ws.send_str(media("!!not-base64!!", chunk=2))
        await ws.send_str("x" * 1_000_000)  # 1 MB: under aiohttp's hard limit, over the codec's
        await ws.send_bytes(b"\x00\x01")
        await ws.send_str(START)  # a second start
        await ws.send_str(media(b"\x02" * 160, chunk=3))
        await ws.send_str(STOP)
        await wait_for(lambda: call.ended.is_set())
    assert call.frames == [b"\x01" * 160, b"\x02" * 160]
    assert [e.detail for e in call.of(ProviderNotice)] == [
        "bad_json", "unknown_event", "bad_base64", "too_large", "not_text", "unexpected_start"]
    assert all(e.provider == "twilio" and e.what == "bad_frame" for e in call.of(ProviderNotice))
    assert call.events[-1] == CallEnded(t_ms=0, reason="stop")


async def test_frames_before_start_are_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="callstate.twilio")
    async with twilio_side(Calls(), start=False) as (ws, calls):
        await ws.send_str(CONNECTED)
        for i in range(3):
            await ws.send_str(media(FRAME, chunk=i + 1))
        await ws.send_str("{oops")
        await ws.send_str(START)
        await ws.send_str(media(b"\x05" * 160, chunk=4))
        await wait_for(lambda: calls.calls and calls.calls[0].frames)
        call = calls.calls[0]
        assert call.frames == [b"\x05" * 160] and call.events == []
    assert caplog.text.count("media before start") == 1
    assert "bad frame before start: bad_json" in caplog.text


async def test_on_call_failure_closes_with_1011_and_the_server_lives_on(caplog: pytest.LogCaptureFixture) -> None:
    good, attempts = Calls(), [0]

    async def on_call(info: CallInfo, phone: TwilioPhone) -> FakeCall:
        attempts[0] += 1
        if attempts[0] == 1:
            raise RuntimeError("runtime refused the call")
        return await good(info, phone)

    async with serve(create_app(on_call=on_call, auth_token=None)) as host, aiohttp.ClientSession() as s:
        async with s.ws_connect(f"ws://{host}/media") as ws:
            await ws.send_str(CONNECTED)
            await ws.send_str(START)
            msg = await asyncio.wait_for(ws.receive(), 2)
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1011
        async with s.ws_connect(f"ws://{host}/media") as ws:
            await ws.send_str(CONNECTED)
            await ws.send_str(START)
            await wait_for(lambda: good.calls)
    assert "on_call failed" in caplog.text


async def test_oversized_message_drops_the_socket_as_an_event() -> None:
    async with twilio_side(Calls(), max_message_bytes=64 * 1024) as (ws, calls):
        await ws.send_str("x" * 100_000)  # over aiohttp's hard limit: it closes the socket (1009)
        await wait_for(lambda: calls.calls[0].ended.is_set())
    assert calls.calls[0].events == [CallEnded(t_ms=0, reason="ws_closed_without_stop")]


# ---------------------------------------------------------------------------------------------- TwilioPhone


def is_last_media(count: int) -> Any:
    seen = [0]

    def pred(m: dict[str, Any]) -> bool:
        seen[0] += m["event"] == "media"
        return seen[0] >= count
    return pred


async def test_audio_is_paced_in_real_time_lead_ms_ahead() -> None:
    async with twilio_side(Calls()) as (ws, calls):
        phone = calls.calls[0].phone
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await phone.send_audio(b"\x11" * 160 * 50)  # 1 s
        first = await read_until(ws, is_last_media(6))
        t_burst = loop.time() - t0
        await read_until(ws, is_last_media(44))
        elapsed_ms = (loop.time() - t0) * 1000
    assert all(base64.b64decode(m["media"]["payload"]) == b"\x11" * 160 for m in first)
    assert t_burst < 0.08  # the first lead_ms (100 ms = 5 frames) go at once, the 6th ~20 ms later
    assert 780 <= elapsed_ms <= 1150  # frame 49 is due at 49*20 - 100 = 880 ms
    assert phone.frames_sent == 50 and phone.max_late_ms < 60


async def test_a_new_run_starts_when_the_queue_ran_dry() -> None:
    async with twilio_side(Calls()) as (ws, calls):
        phone = calls.calls[0].phone
        await phone.send_audio(b"\x11" * 160 * 3)
        await read_until(ws, is_last_media(3))
        await asyncio.sleep(0.3)  # the caller heard it all; the playhead is behind now
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await phone.send_audio(b"\x22" * 160 * 5)
        await read_until(ws, is_last_media(5))
        assert loop.time() - t0 < 0.08  # a fresh run: its first lead_ms go at once, not on the old clock


async def test_marks_follow_their_audio() -> None:
    async with twilio_side(Calls()) as (ws, calls):
        phone = calls.calls[0].phone
        await phone.send_audio(b"\x11" * 160 * 8)
        await phone.send_mark("m1")
        await phone.send_audio(b"\x22" * 200)  # 1.25 frames: a short tail goes as it is
        await phone.send_mark("m2")
        got = await read_until(ws, lambda m: m["event"] == "mark" and m["mark"]["name"] == "m2")
    assert kinds(got) == ["media"] * 8 + ["mark:m1", "media", "media", "mark:m2"]
    assert len(base64.b64decode(got[-2]["media"]["payload"])) == 40
    assert all(m["streamSid"] == STREAM for m in got)


async def test_clear_drops_queued_audio_and_jumps_the_queue() -> None:
    async with twilio_side(Calls()) as (ws, calls):
        phone = calls.calls[0].phone
        await phone.send_audio(b"\x11" * 160 * 100)  # 2 s
        await phone.send_mark("reply-1")
        await read_until(ws, is_last_media(10))
        await phone.clear()
        got = await read_until(ws, lambda m: m["event"] == "clear")
        # Unsent marks go just before the clear, so Twilio echoes them as flushed.
        assert kinds(got)[-2:] == ["mark:reply-1", "clear"]
        assert kinds(got).count("media") <= 3
        with pytest.raises(TimeoutError):  # nothing of the dropped audio follows
            await read_until(ws, lambda m: True, timeout_s=0.3)
        await phone.send_audio(b"\x22" * 160 * 2)  # after a clear: a new run, at once
        assert kinds(await read_until(ws, is_last_media(2), timeout_s=0.1)) == ["media", "media"]


async def test_hangup_without_rest_closes_the_socket() -> None:
    async with twilio_side(Calls()) as (ws, calls):
        await calls.calls[0].phone.hangup()
        msg = await asyncio.wait_for(ws.receive(), 2)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await wait_for(lambda: calls.calls[0].ended.is_set())
    assert calls.calls[0].events == [CallEnded(t_ms=0, reason="ws_closed_without_stop")]


async def test_sends_after_the_socket_closed_are_dropped_quietly() -> None:
    async with twilio_side(Calls()) as (ws, calls):
        phone = calls.calls[0].phone
        await ws.close()
        await wait_for(lambda: calls.calls[0].ended.is_set())
        await phone.send_audio(FRAME * 3)
        await phone.send_mark("late")
        await phone.clear()
        await phone.transfer("+15550100")  # no REST: logged, not raised


# ---------------------------------------------------------------------------------------------- REST


class FakeTwilioHttp(AsyncHttpClient):
    """Twilio's REST API as the SDK sees it (reference 1.6): records requests, answers from a script."""

    def __init__(self, status: int = 200, body: dict[str, Any] | None = None, exc: Exception | None = None) -> None:
        super().__init__(logging.getLogger("fake.twilio"), True)
        self.status, self.body, self.exc = status, body, exc
        self.requests: list[dict[str, Any]] = []

    async def request(self, method: str, uri: str, params: Any = None, data: Any = None, headers: Any = None,
                      auth: Any = None, timeout: Any = None, allow_redirects: bool = False) -> Response:
        self.requests.append({"method": method, "uri": uri, "data": dict(data or {}), "auth": auth})
        if self.exc is not None:
            raise self.exc
        body = self.body if self.body is not None else {"sid": CALL, "account_sid": ACCOUNT, "status": "completed"}
        return Response(self.status, json.dumps(body))


CALL_URL = f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Calls/{CALL}.json"


async def test_rest_hangup_posts_status_completed() -> None:
    http = FakeTwilioHttp()
    assert await TwilioRest(ACCOUNT, TOKEN, http_client=http).hangup(CALL)
    (req,) = http.requests
    assert (req["method"], req["uri"], req["data"]) == ("POST", CALL_URL, {"Status": "completed"})
    assert req["auth"] == (ACCOUNT, TOKEN)


async def test_rest_transfer_posts_escaped_dial_twiml() -> None:
    http = FakeTwilioHttp()
    rest = TwilioRest(ACCOUNT, TOKEN, http_client=http)
    assert await rest.transfer(CALL, "+15550100")
    assert await rest.transfer(CALL, "<Hangup/>")
    first, second = (r["data"]["Twiml"] for r in http.requests)
    assert "<Response><Dial>+15550100</Dial></Response>" in first
    assert "<Dial>&lt;Hangup/&gt;</Dial>" in second
    assert http.requests[0]["uri"] == CALL_URL and TOKEN not in repr(rest)


@pytest.mark.parametrize(("status", "body", "ok"), [
    (404, {"code": 20404, "message": "The requested resource was not found", "status": 404}, True),
    (400, {"code": 21220, "message": "Call is not in-progress. Cannot redirect.", "status": 400}, True),
    (401, {"code": 20003, "message": "Authenticate", "status": 401}, False),
    (500, None, False),
])
async def test_rest_errors_are_logged_never_raised(status: int, body: dict[str, Any] | None, ok: bool,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    http = FakeTwilioHttp(status=status, body=body or {"oops": True})
    assert await TwilioRest(ACCOUNT, TOKEN, http_client=http).hangup(CALL) is ok
    assert TOKEN not in caplog.text
    assert ("failed" in caplog.text) is not ok


async def test_rest_network_error_is_logged_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    http = FakeTwilioHttp(exc=aiohttp.ClientConnectionError(f"boom {TOKEN}"))
    assert await TwilioRest(ACCOUNT, TOKEN, http_client=http).transfer(CALL, "+1555") is False
    assert "ClientConnectionError" in caplog.text and TOKEN not in caplog.text


async def test_phone_hangup_and_transfer_go_through_rest() -> None:
    http = FakeTwilioHttp()
    async with twilio_side(Calls(), rest=TwilioRest(ACCOUNT, TOKEN, http_client=http)) as (ws, calls):
        phone = calls.calls[0].phone
        await phone.transfer("+15550100")
        await phone.hangup()
        assert [r["data"].keys() for r in http.requests] == [{"Twiml"}, {"Status"}]
        assert not ws.closed  # Twilio ends the stream itself (stop, then close)


async def test_phone_hangup_falls_back_to_closing_when_rest_fails() -> None:
    http = FakeTwilioHttp(status=500, body={"oops": True})
    async with twilio_side(Calls(), rest=TwilioRest(ACCOUNT, TOKEN, http_client=http)) as (ws, calls):
        await calls.calls[0].phone.hangup()
        msg = await asyncio.wait_for(ws.receive(), 2)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


@pytest.mark.parametrize("media", [
    {"payload": base64.b64encode(b"\x7f" * 160).decode(), "chunk": "3", "timestamp": "40"},
    {"payload": base64.b64encode(b"\x00" * 7).decode(), "chunk": "12", "timestamp": "0"},
    {"payload": "", "chunk": "1", "timestamp": "0"},
    {"payload": "AAAA AAAA", "chunk": "1", "timestamp": "0"},
    {"payload": "AAA", "chunk": "1", "timestamp": "0"},
    {"payload": "AAAA=", "chunk": "1", "timestamp": "0"},
    {"payload": "ÄÄÄÄ", "chunk": "1", "timestamp": "0"},
    {"payload": "AAAA", "chunk": "²", "timestamp": "0"},
    {"payload": "AAAA", "chunk": " 1", "timestamp": "0"},
    {"payload": "AAAA", "chunk": 1, "timestamp": "0"},
    {"payload": "AAAA", "chunk": "1"},
    {"payload": None, "chunk": "1", "timestamp": "0"},
])
def test_the_media_fast_path_decides_as_the_full_decoder(media: dict[str, object]) -> None:
    """Issue 15: media frames take a short path (50 a second a call); it must agree with the full one."""
    from adapters.twilio import _decode, _Reject

    msg = {"event": "media", "sequenceNumber": "4", "streamSid": "MZ1", "media": media}
    try:
        full = _decode(msg)
    except _Reject as r:
        full = Decoded("bad", reason=r.reason, detail=r.detail)
    assert decode(json.dumps(msg)) == full
