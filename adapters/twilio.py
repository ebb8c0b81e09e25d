"""Twilio: the number's TwiML webhook, the Media Streams WebSocket, and REST hang-up / transfer.

Rules:
- Imports engine.events, the twilio SDK, aiohttp and the stdlib only. ``decode``/``encode_*`` are a pure
  codec tested with recorded JSON (style 2.4); the aiohttp handlers only loop over it.
- Inbound: ``media`` -> ``handle.audio_in(bytes)`` (no event: 50 a second); dtmf / mark / stop -> events with
  ``t_ms=0`` (the runtime stamps arrival). A bad frame never raises: before ``start`` it is logged, after it a
  ProviderNotice, and the call goes on. A socket closed without ``stop`` is an event too (style 2.2).
- Outbound: TwilioPhone paces audio in real time, ``lead_ms`` ahead of the caller's ear, so a ``clear``
  (barge-in) finds at most ``lead_ms`` of audio already at Twilio, and the rest is still ours to drop.
- The auth token appears in no log line, event or exception text: REST errors are logged as status + code.
- Signatures (reference 1.5; twilio SDK ``request_validator.py``): HMAC-SHA1 keyed with the Auth Token, or,
  when ``X-Twilio-Webhooks-Signature-Settings`` names ``algorithm=HMAC_SHA256`` (Webhook Rules), HMAC-SHA256
  keyed with the SharedKey secret. The URL is tried bare and with its scheme's default port (443 for https
  and wss, 80 for http and ws): Twilio may sign either; the SDK's ``validate`` would try :80 for a wss URL.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web
from twilio.base.exceptions import TwilioException
from twilio.http import AsyncHttpClient
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import (
    HMAC_SHA1,
    HMAC_SHA256,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)
from twilio.rest import Client
from twilio.twiml.voice_response import Connect, VoiceResponse

from engine.events import FRAME_BYTES, SAMPLE_RATE, CallEnded, Dtmf, Input, PlaybackMark, ProviderNotice

log = logging.getLogger("callstate.twilio")

#: A media frame is ~300 characters and a start frame well under 4 KiB (about 500 characters a custom
#: parameter, reference 1.1): 64 KiB of text is not Twilio talking. Such frames are dropped, not parsed.
MAX_TEXT_CHARS = 64 * 1024
#: aiohttp's own hard limit: a bigger frame kills the socket (close 1009), so it sits well above the soft one.
MAX_MESSAGE_BYTES = 2 * 1024 * 1024
BYTES_PER_S = SAMPLE_RATE  # mu-law: one byte a sample
DTMF_DIGITS = "0123456789*#ABCD"
MEDIA_FORMAT = "audio/x-mulaw;rate=8000;channels=1"  # the only format of a phone stream (reference 1.2)
#: A SID: Twilio's are two letters and 32 hex digits (CA..., MZ...); anything this shape is safe to print.
_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Twilio's error when updating a call that has already ended: "Call is not in-progress. Cannot redirect."
NOT_IN_PROGRESS = 21220


# ---------------------------------------------------------------------------------------------- codec


@dataclass(frozen=True, slots=True)
class CallInfo:
    call_sid: str
    stream_sid: str
    account_sid: str = ""
    params: dict[str, str] = field(default_factory=dict)  # start.customParameters (our <Parameter>s)
    media_format: str = MEDIA_FORMAT


@dataclass(frozen=True, slots=True)
class Decoded:
    """One inbound frame, tagged by ``kind``; only that kind's fields are set."""

    kind: Literal["connected", "start", "media", "dtmf", "mark", "stop", "bad"]
    info: CallInfo | None = None  # start
    payload: bytes = b""  # media: raw mu-law
    chunk: int = 0  # media: counts up from 1
    timestamp: int = 0  # media: ms since the stream started
    digit: str = ""  # dtmf
    name: str = ""  # mark
    #: bad: not_text bad_json not_object too_large unknown_event missing_field bad_field bad_base64
    #: empty_payload wrong_media_format
    reason: str = ""
    detail: str = ""  # bad: the field at fault (for the log only)


class _Reject(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason, self.detail = reason, detail


def _get(msg: dict[str, Any], path: str, kind: type | tuple[type, ...] = str) -> Any:
    cur: Any = msg
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise _Reject("missing_field", path)
        cur = cur[part]
    if not isinstance(cur, kind) or isinstance(cur, bool):
        raise _Reject("bad_field", path)
    return cur


def _int(msg: dict[str, Any], path: str) -> int:
    value = _get(msg, path, (str, int))  # Twilio sends counters as strings ("chunk": "1"), reference 1.2
    try:
        return int(value)
    except ValueError:
        raise _Reject("bad_field", path) from None


def decode(text: str) -> Decoded:
    """One inbound Media Streams text frame -> a tagged result. Never raises."""
    if not isinstance(text, str):
        return Decoded("bad", reason="not_text")
    if len(text) > MAX_TEXT_CHARS:
        return Decoded("bad", reason="too_large", detail=f"{len(text)} chars")
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: 64 KiB of "[[[[" is valid-looking input
        return Decoded("bad", reason="bad_json")
    if not isinstance(msg, dict):
        return Decoded("bad", reason="not_object")
    if msg.get("event") == "media" and (fast := _media(msg.get("media"))) is not None:
        return fast
    try:
        return _decode(msg)
    except _Reject as r:
        return Decoded("bad", reason=r.reason, detail=r.detail)


def _media(media: Any) -> Decoded | None:
    """A well-formed media frame, the common case (50 a second a call), in a few steps; None for anything the
    full path must judge (it then gives the same result or the precise reason)."""
    if type(media) is not dict:
        return None
    payload, chunk, timestamp = media.get("payload"), media.get("chunk"), media.get("timestamp")
    if not (type(payload) is str and type(chunk) is str and type(timestamp) is str
            and chunk.isascii() and chunk.isdigit() and timestamp.isascii() and timestamp.isdigit()):
        return None
    try:
        audio = binascii.a2b_base64(payload, strict_mode=True)  # b64decode(validate=True), one C call
    except (binascii.Error, ValueError):
        return None
    return Decoded("media", payload=audio, chunk=int(chunk), timestamp=int(timestamp)) if audio else None


def _decode(msg: dict[str, Any]) -> Decoded:
    event = _get(msg, "event")
    if event == "media":
        try:
            payload = base64.b64decode(_get(msg, "media.payload"), validate=True)
        except (binascii.Error, ValueError):  # ValueError: non-ASCII characters in the payload
            raise _Reject("bad_base64", "media.payload") from None
        if not payload:
            raise _Reject("empty_payload", "media.payload")
        return Decoded("media", payload=payload, chunk=_int(msg, "media.chunk"),
                       timestamp=_int(msg, "media.timestamp"))
    if event == "mark":
        return Decoded("mark", name=_get(msg, "mark.name"))
    if event == "dtmf":
        digit = _get(msg, "dtmf.digit")
        if len(digit) != 1 or digit not in DTMF_DIGITS:  # Dtmf() would refuse it: reject here, not raise there
            raise _Reject("bad_field", "dtmf.digit")
        return Decoded("dtmf", digit=digit)
    if event == "start":
        enc = _get(msg, "start.mediaFormat.encoding")
        rate, channels = _int(msg, "start.mediaFormat.sampleRate"), _int(msg, "start.mediaFormat.channels")
        fmt = f"{enc.lower()};rate={rate};channels={channels}"
        if fmt != MEDIA_FORMAT:
            raise _Reject("wrong_media_format", fmt)
        custom = msg["start"].get("customParameters", {})
        if not isinstance(custom, dict):
            raise _Reject("bad_field", "start.customParameters")
        stream_sid = msg.get("streamSid") or _get(msg, "start.streamSid")
        if not isinstance(stream_sid, str):
            raise _Reject("bad_field", "streamSid")
        account = msg["start"].get("accountSid", "")
        call_sid = _get(msg, "start.callSid")
        if not _SID.fullmatch(call_sid):  # it names the call in logs and files: no newlines, no escapes
            raise _Reject("bad_field", "start.callSid")
        if not _SID.fullmatch(stream_sid):
            raise _Reject("bad_field", "streamSid")
        return Decoded("start", info=CallInfo(
            call_sid=call_sid, stream_sid=stream_sid,
            account_sid=account if isinstance(account, str) else "",
            params={str(k): str(v) for k, v in custom.items()}, media_format=fmt))
    if event == "connected":
        return Decoded("connected")
    if event == "stop":
        return Decoded("stop")
    raise _Reject("unknown_event", event[:40])


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def encode_media(stream_sid: str, payload: bytes) -> str:
    media = {"payload": base64.b64encode(payload).decode("ascii")}
    return _dumps({"event": "media", "streamSid": stream_sid, "media": media})


def encode_mark(stream_sid: str, name: str) -> str:
    return _dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def encode_clear(stream_sid: str) -> str:
    return _dumps({"event": "clear", "streamSid": stream_sid})


# ---------------------------------------------------------------------------------------------- REST


class TwilioRest:
    """Hang up / transfer a live call through the REST API. Never raises: failures are logged, return False."""

    def __init__(self, account_sid: str, auth_token: str, *, http_client: AsyncHttpClient | None = None) -> None:
        self.account_sid = account_sid
        self._token = auth_token
        self._http = http_client
        self._own_http = http_client is None
        self._client: Client | None = None

    def __repr__(self) -> str:  # never the token
        return f"TwilioRest(account_sid={self.account_sid!r})"

    def _call(self, call_sid: str) -> Any:
        if self._client is None:  # built lazily: AsyncTwilioHttpClient opens an aiohttp session (needs a loop)
            if self._http is None:
                self._http = AsyncTwilioHttpClient(timeout=10)
            self._client = Client(self.account_sid, self._token, http_client=self._http)
        return self._client.calls(call_sid)

    async def hangup(self, call_sid: str) -> bool:
        return await self._update(call_sid, "hangup", status="completed")

    async def transfer(self, call_sid: str, to: str) -> bool:
        twiml = VoiceResponse()
        twiml.dial(to)  # the SDK escapes ``to``: no TwiML injection through a number from the LLM
        return await self._update(call_sid, "transfer", twiml=str(twiml))

    async def _update(self, call_sid: str, what: str, **changes: str) -> bool:
        """True when done or when the call had already ended (nothing left to do); False on a failure."""
        try:
            await self._call(call_sid).update_async(**changes)
            return True
        except TwilioException as e:
            status, code = getattr(e, "status", None), getattr(e, "code", None)
            if status == 404 or code == NOT_IN_PROGRESS:  # the caller hung up first: a normal race
                log.info("twilio rest %s %s: call already ended (HTTP %s, code %s)", what, call_sid, status, code)
                return True
            log.warning("twilio rest %s %s failed: HTTP %s, code %s", what, call_sid, status, code)
        except Exception as e:  # network and the like; the text may echo the request, so only the type
            log.warning("twilio rest %s %s failed: %s", what, call_sid, type(e).__name__)
        return False

    async def aclose(self) -> None:
        if self._own_http and isinstance(self._http, AsyncTwilioHttpClient):
            await self._http.close()


# ---------------------------------------------------------------------------------------------- phone


class TwilioPhone:
    """``engine.ports.Phone`` over one Media Stream. Sends enqueue at once (order kept), one task paces them.

    Pacing: a *run* is audio played back to back. Frame k of a run goes out at ``run_start + k*20 ms -
    lead_ms``; a new run starts when the queue had run dry and the caller's playhead (``run_start`` + audio
    sent in the run) is behind now, or after a clear (Twilio's buffer is empty again).
    """

    def __init__(self, ws: web.WebSocketResponse, stream_sid: str, *, rest: TwilioRest | None = None,
                 call_sid: str = "", lead_ms: int = 100) -> None:
        self._ws, self.stream_sid, self._rest, self.call_sid = ws, stream_sid, rest, call_sid
        self._lead_s = lead_ms / 1000
        self._queue: deque[tuple[str, float]] = deque()  # (message, seconds of audio; 0.0 for a mark)
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._gen = 0  # bumped by clear(): a sender asleep before a cleared frame must not send it
        self._run_start = self._run_s = 0.0
        self._dry = True  # the queue ran empty since the last frame: the next one may start a new run
        self._restart = False
        self.max_late_ms = 0.0  # worst lateness of a frame against its due time (benchmarks read it)
        self.frames_sent = 0
        self.closed = False

    async def send_audio(self, mulaw: bytes) -> None:
        # No await before the enqueue: the runtime spawns sends as tasks, and their order is the call order.
        if self.closed or not mulaw:
            return
        for i in range(0, len(mulaw), FRAME_BYTES):
            frame = mulaw[i:i + FRAME_BYTES]  # a short tail goes as it is: Twilio takes any payload size
            self._queue.append((encode_media(self.stream_sid, frame), len(frame) / BYTES_PER_S))
        self._kick()

    async def send_mark(self, name: str) -> None:
        if not self.closed:
            self._queue.append((encode_mark(self.stream_sid, name), 0.0))  # after the audio queued before it
            self._kick()

    async def clear(self) -> None:
        if self.closed:
            return
        # Marks still queued here go out ahead of the clear, so Twilio echoes them as flushed (reference 1.4):
        # the runtime gets a PlaybackMark for every mark it sent, played or not, as with audio Twilio held.
        out = [msg for msg, seconds in self._queue if not seconds]
        self._queue.clear()
        self._gen += 1
        self._restart = True
        out.append(encode_clear(self.stream_sid))
        for msg in out:  # straight to the socket: jumps whatever the sender is waiting on
            await self._send(msg)

    async def hangup(self) -> None:
        if self._rest is not None and self.call_sid and await self._rest.hangup(self.call_sid):
            return
        # No REST (or it failed): closing the socket ends <Connect>, and with no TwiML after it, the call.
        # The bridge sees the close and emits CallEnded(ws_closed_without_stop).
        with contextlib.suppress(Exception):
            await self._ws.close()

    async def transfer(self, to: str) -> None:
        if self._rest is None or not self.call_sid:
            log.warning("twilio: transfer of %s needs REST credentials (TWILIO_ACCOUNT_SID)", self.call_sid)
            return
        await self._rest.transfer(self.call_sid, to)

    def close(self) -> None:
        self.closed = True
        self._queue.clear()
        if self._sender is not None:
            self._sender.cancel()

    def _kick(self) -> None:
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._pace(), name=f"pace {self.stream_sid}")
        self._wake.set()

    async def _send(self, msg: str) -> None:
        try:
            await self._ws.send_str(msg)
        except (ConnectionError, RuntimeError) as e:  # the socket closed under us: the bridge reports it
            log.debug("twilio: send on a closed stream %s: %s", self.stream_sid, type(e).__name__)
            self.close()

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.closed:
            if not self._queue:
                self._dry = True
                self._wake.clear()
                await self._wake.wait()
                continue
            msg, seconds = self._queue[0]
            if seconds:
                now = loop.time()
                if self._restart or (self._dry and self._run_start + self._run_s <= now):
                    self._run_start, self._run_s, self._restart = now, 0.0, False
                self._dry = False
                due = self._run_start + self._run_s - self._lead_s
                if due > now:
                    gen = self._gen
                    await asyncio.sleep(due - now)
                    if gen != self._gen:
                        continue  # cleared while we slept: the head is something else now
                # The first lead_ms of a run are due before run_start on purpose: no lateness for them.
                late_ms = (loop.time() - max(due, self._run_start)) * 1000
                self.max_late_ms = max(self.max_late_ms, late_ms)
                self._run_s += seconds
                self.frames_sent += 1
            self._queue.popleft()
            await self._send(msg)


# ---------------------------------------------------------------------------------------------- app


class CallRefused(RuntimeError):
    """``on_call`` turns a call away on purpose (shutting down, the log is behind): one line, no traceback."""


class CallHandle(Protocol):  # engine.ports.CallHandle, restated: adapters don't import engine.ports
    def audio_in(self, mulaw: bytes) -> None: ...
    def emit(self, event: Input) -> None: ...
    async def wait(self) -> None: ...


OnCall = Callable[[CallInfo, TwilioPhone], Awaitable[CallHandle]]


def _first(value: str | None) -> str:
    return value.split(",")[0].strip() if value else ""  # proxies chain values: "https, http"


def public_base(request: web.Request, public_url: str | None, *, ws: bool,
                trusted_proxies: frozenset[str] = frozenset()) -> str:
    """The URL Twilio sees for this app's root: ``public_url``, else this request's own scheme and Host.
    X-Forwarded-Proto/-Host count only from a peer in ``trusted_proxies``: anyone else can forge them, and
    a forged host would both pass a signature made for it and receive the stream (issue 11)."""
    if public_url:
        scheme, sep, rest = public_url.rstrip("/").partition("://")
        if not sep:
            scheme, rest = "https", public_url.rstrip("/")
    elif request.remote in trusted_proxies:
        scheme = _first(request.headers.get("X-Forwarded-Proto")) or request.scheme
        rest = _first(request.headers.get("X-Forwarded-Host")) or request.host
    else:
        scheme, rest = request.scheme, request.host
    scheme = scheme.lower()
    if ws:
        scheme = {"https": "wss", "http": "ws"}.get(scheme, scheme)
    return f"{scheme}://{rest}"


#: The port a URL of each scheme means when it names none.
DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}


def url_variants(url: str) -> list[str]:
    """``url`` as Twilio may have signed it: without and with its scheme's default port."""
    parts = urlsplit(url)
    default = DEFAULT_PORTS.get(parts.scheme)
    if default is None or (parts.port is not None and parts.port != default):
        return [url]
    host = parts.netloc.rsplit(":", 1)[0] if parts.port is not None else parts.netloc
    return [parts._replace(netloc=host).geturl(), parts._replace(netloc=f"{host}:{default}").geturl()]


class Signatures:
    """Checks ``X-Twilio-Signature``: HMAC-SHA1 with the Auth Token, HMAC-SHA256 with the Webhook Rules key."""

    def __init__(self, auth_token: str | None, shared_key: str | None = None) -> None:
        self._keys = {HMAC_SHA1: RequestValidator(auth_token) if auth_token else None,
                      HMAC_SHA256: RequestValidator(shared_key) if shared_key else None}

    def __repr__(self) -> str:  # never a secret
        return f"Signatures({', '.join(k for k, v in self._keys.items() if v is not None)})"

    @property
    def enabled(self) -> bool:
        return any(v is not None for v in self._keys.values())

    def check(self, url: str, params: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
        """None when the request is Twilio's, else why not (safe to log: no secret, no signature)."""
        signature = headers.get("X-Twilio-Signature", "")
        if not signature:
            return "missing X-Twilio-Signature"
        algorithm = get_signature_algorithm(headers.get(SIGNATURE_SETTINGS_HEADER)).upper()
        if algorithm not in self._keys:
            return f"unsupported signature algorithm {algorithm[:32]!r}"
        validator = self._keys[algorithm]
        if validator is None:
            need = "TWILIO_WEBHOOK_SHARED_KEY" if algorithm == HMAC_SHA256 else "TWILIO_AUTH_TOKEN"
            return f"{algorithm} signature, but {need} is not set"
        # compute_signature, not validate: validate's own port retry gives a wss URL :80 (request_validator.py)
        given = signature.encode()  # bytes: compare_digest refuses non-ASCII str (a client can send any)
        if any(hmac.compare_digest(validator.compute_signature(u, params, algorithm).encode(), given)
               for u in url_variants(url)):
            return None
        return f"bad {algorithm} signature"


@dataclass(frozen=True)
class StreamLimits:
    """How long a Media Stream peer may stay silent. Twilio sends ``start`` right after the upgrade and
    then a media frame every 20 ms for the whole call (reference 1.2), so seconds of silence mean a dead or
    hostile peer."""

    start_s: float = 5.0  # upgrade -> the start frame
    idle_s: float = 20.0  # between frames once the call runs


def create_app(*, on_call: OnCall, auth_token: str | None, public_url: str | None = None,
               skip_signature: bool = False, rest: TwilioRest | None = None,
               max_message_bytes: int = MAX_MESSAGE_BYTES, lead_ms: int = 100,
               shared_key: str | None = None,
               media_token: Callable[[web.Request], bool] | None = None,
               trusted_proxies: frozenset[str] = frozenset(), limits: StreamLimits = StreamLimits(),
               on_timeout: Callable[[str], None] = lambda what: None) -> web.Application:
    """``POST /twiml`` (the number's voice webhook) and ``GET /media`` (the Media Streams socket).

    ``on_call(info, phone)`` returns the call's handle (engine.ports.CallHandle). ``rest`` is closed with the app.
    ``shared_key``: the Webhook Rules SharedKey secret (HMAC-SHA256 signatures), beside the Auth Token.
    ``on_timeout(what)`` counts a peer cut for silence: "ws_start" or "ws_idle".
    ``media_token`` (the browser phone's check) admits a /media request Twilio did not sign; when it is set,
    /media takes a valid Twilio signature or a valid token and nothing else, even with no auth token.
    """
    signatures = Signatures(auth_token, shared_key)
    checked = signatures.enabled and not skip_signature
    if not checked and not skip_signature:  # skipping on purpose: the caller said so already
        log.warning("twilio: request signatures are not checked (no auth token)")

    def signed(request: web.Request, params: Mapping[str, Any], *, ws: bool) -> bool:
        if not checked:
            return True
        # Reference 1.5: the URL exactly as Twilio requested it, query included, behind any proxy.
        url = public_base(request, public_url, ws=ws, trusted_proxies=trusted_proxies) + request.raw_path
        why = signatures.check(url, params, request.headers)
        if why is None:
            return True
        # The usual cause is a tunnel or proxy: Twilio signed the public URL, we rebuilt another one.
        log.warning("twilio: %s on %s %s: checked against %r. If Twilio calls another URL (a tunnel, a proxy), "
                    "start engine serve with --public-url https://<the host Twilio calls> (or --trusted-proxy "
                    "<its IP> if that proxy sets X-Forwarded-Host)",
                    why, request.method, request.path, url.split("?", 1)[0] if ws else url)
        return False

    phone_only = media_token is not None and not signatures.enabled and not skip_signature

    async def twiml(request: web.Request) -> web.Response:
        form = await request.post()
        if phone_only:  # no auth token to check Twilio with: the browser phone's socket is all there is
            return web.Response(status=403, text="no Twilio auth token configured")
        if not signed(request, form, ws=False):
            return web.Response(status=403, text="bad signature")
        # Stream URLs take no query string (reference 1.1): extras ride as <Parameter>s, e.g. ?script=...
        params = {k: v for k, v in request.query.items()}
        params.update({k: str(form[k]) for k in ("CallSid", "From", "To") if k in form})
        stream_url = public_base(request, public_url, ws=True, trusted_proxies=trusted_proxies) + \
            str(request.app.router["media"].url_for())
        response, connect = VoiceResponse(), Connect()
        stream = connect.stream(url=stream_url)
        for name, value in params.items():
            stream.parameter(name=name, value=value)
        response.append(connect)
        return web.Response(text=str(response), content_type="text/xml")

    async def media(request: web.Request) -> web.StreamResponse:
        # Before the upgrade: a plain HTTP 403.
        if media_token is not None and media_token(request):
            pass
        elif phone_only:
            log.warning("twilio: /media without a valid phone token, and no auth token to check a signature")
            return web.Response(status=403, text="a valid phone token or Twilio signature is required")
        elif not signed(request, {}, ws=True):
            return web.Response(status=403, text="bad signature")
        ws = web.WebSocketResponse(max_msg_size=max_message_bytes)
        await ws.prepare(request)
        waiting.add(ws)
        try:
            await _bridge(ws, on_call, rest, lead_ms, limits, on_timeout, waiting)
        finally:
            waiting.discard(ws)
        return ws

    async def shutdown(_app: web.Application) -> None:
        # Sockets that never sent ``start`` have no call to drain: close them now, or the server's shutdown
        # waits on their handlers (issue 11: ~2 minutes).
        for ws in list(waiting):
            with contextlib.suppress(Exception):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    async def cleanup(_app: web.Application) -> None:
        if rest is not None:
            await rest.aclose()

    waiting: set[web.WebSocketResponse] = set()  # upgraded, no start frame yet
    app = web.Application()
    app.router.add_post("/twiml", twiml, name="twiml")
    app.router.add_get("/media", media, name="media")
    app.on_shutdown.append(shutdown)
    app.on_cleanup.append(cleanup)
    return app


async def _bridge(ws: web.WebSocketResponse, on_call: OnCall, rest: TwilioRest | None, lead_ms: int,
                  limits: StreamLimits, on_timeout: Callable[[str], None],
                  waiting: set[web.WebSocketResponse]) -> None:
    """One stream: wait for ``start``, hand the call to ``on_call``, then route frames until the end."""
    handle: CallHandle | None = None
    phone: TwilioPhone | None = None
    ended, early_media = False, 0
    loop = asyncio.get_running_loop()
    start_by = loop.time() + limits.start_s
    try:
        while True:
            wait = max(0.001, start_by - loop.time()) if handle is None else limits.idle_s
            try:
                msg = await ws.receive(timeout=wait)
            except TimeoutError:
                what = "ws_start" if handle is None else "ws_idle"
                on_timeout(what)
                log.warning("twilio: %s; closing the stream", f"no start frame within {limits.start_s:g} s of "
                            "the upgrade" if handle is None else f"no frame for {limits.idle_s:g} s")
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"timeout")
                break
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break  # ERROR (e.g. a frame over max_message_bytes): aiohttp has closed the socket
            d = decode(msg.data) if msg.type is WSMsgType.TEXT else Decoded("bad", reason="not_text")
            if handle is None:
                if d.kind == "start" and d.info is not None:
                    info = d.info
                    phone = TwilioPhone(ws, info.stream_sid, rest=rest, call_sid=info.call_sid, lead_ms=lead_ms)
                    waiting.discard(ws)
                    try:
                        handle = await on_call(info, phone)
                    except Exception as exc:
                        if isinstance(exc, CallRefused):  # draining, or the log is behind: no traceback
                            log.warning("twilio: on_call failed for %s: %s", info.call_sid, exc)
                        else:
                            log.exception("twilio: on_call failed for %s", info.call_sid)
                        await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"call setup failed")
                        return
                elif d.kind == "media":
                    early_media += 1
                    if early_media == 1:  # one line, not fifty a second
                        log.warning("twilio: media before start: ignored")
                elif d.kind == "bad":
                    log.warning("twilio: bad frame before start: %s %s", d.reason, d.detail)
                continue
            if d.kind == "media":
                handle.audio_in(d.payload)
            elif d.kind == "mark":
                handle.emit(PlaybackMark(t_ms=0, name=d.name))
            elif d.kind == "dtmf":
                handle.emit(Dtmf(t_ms=0, digit=d.digit))
            elif d.kind == "stop":
                handle.emit(CallEnded(t_ms=0, reason="stop"))
                ended = True
                break  # Twilio closes the socket next (reference 1.2)
            else:  # bad, or a second start / connected
                log.info("twilio: bad frame: %s %s %s", d.kind, d.reason, d.detail)
                reason = d.reason if d.kind == "bad" else f"unexpected_{d.kind}"
                handle.emit(ProviderNotice(t_ms=0, provider="twilio", what="bad_frame", detail=reason))
        if handle is not None:
            if not ended:
                handle.emit(CallEnded(t_ms=0, reason="ws_closed_without_stop"))
                ended = True
            await handle.wait()  # the call finishes (goodbye marks, log flush) before the socket goes
    except asyncio.CancelledError:  # server shutdown: the call must still end on the record
        if handle is not None and not ended:
            handle.emit(CallEnded(t_ms=0, reason="shutdown"))
        raise
    finally:
        if phone is not None:
            phone.close()
