"""Tools the LLM may call: HTTP webhooks (aiohttp) and Python callables ("module:function").

Rules:
- Imports engine.events and aiohttp only. Tool definitions are duck-typed: an object with ``.webhook``
  (url, method, headers, timeout_ms, cache_ttl_s, secret) or ``.function`` ("module:function"),
  e.g. engine.flow.Tool, but this module never imports it.
- ``call`` never raises (except CancelledError: cancelling its task aborts the request). Every failure is a
  ToolResult(ok=False, error=<code>, body='{"error": <code>, "detail": ...}') the LLM can read. Codes:
  timeout, http_<status>, not_json, too_large, connection, bad_arguments, unknown_tool, exception.
  Details never contain the secret, header values or a traceback.
- Results carry ``cause`` = the CallTool's seq and ``t_ms=0`` (the runtime stamps arrival).

Webhook requests: POST sends the arguments as a JSON body; GET sends them as query parameters (strings
as-is, anything else as JSON text). One ClientSession per runner, so calls reuse keep-alive connections.

Signing (Stripe-style): when the webhook has a ``secret``, each request carries

    X-Callstate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{payload}")>

where payload is the request body for POST and the raw (still percent-encoded) query string for GET
(aiohttp: ``request.rel_url.raw_query_string``). Receivers check it with
``verify_signature(secret, header, payload, now=time.time())``; the timestamp bounds replays (300 s).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import inspect
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp
from yarl import URL

from engine.events import CallTool, ToolResult

__all__ = ["MAX_BODY_BYTES", "SIGNATURE_HEADER", "ToolRunner", "sign", "verify_signature"]

SIGNATURE_HEADER = "X-Callstate-Signature"
#: A tool result goes into the LLM's context; 64 KiB is already ~16k tokens, far more than a turn can use.
MAX_BODY_BYTES = 64 * 1024
#: Vapi's default tool timeout is 20 s, far too long for a silent phone line; 3 s matches flow.Webhook.
DEFAULT_TIMEOUT_MS = 3000
_CACHE_MAX = 1024


class _Fail(Exception):
    """Internal: a failure code on its way to a ToolResult; never leaves this module."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code)
        self.code, self.detail = code, detail


def sign(secret: str, payload: str | bytes, t: int) -> str:
    """The signature header value for ``payload`` sent at unix time ``t``."""
    raw = payload.encode() if isinstance(payload, str) else payload
    mac = hmac.new(secret.encode(), str(t).encode() + b"." + raw, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(secret: str, header: str, body: str | bytes, now: float, tolerance_s: int = 300) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and its timestamp is within ``tolerance_s``."""
    t: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            t = int(value)
        elif key == "v1":
            macs.append(value)
    if t is None or not macs or abs(now - t) > tolerance_s:
        return False
    expected = sign(secret, body, t).rpartition("v1=")[2]
    # Several v1 entries are allowed (secret rotation); compare each in constant time.
    return any(hmac.compare_digest(expected, m) for m in macs)


#: A path segment this long and opaque is a token (Slack's /services/T../B../<secret>, Discord's
#: /api/webhooks/<id>/<token>), not a name like /shipments.
_OPAQUE = re.compile(r"[A-Za-z0-9_-]{20,}")


def _public(url: URL) -> str:
    """The URL without what may be secret: no user:password, no query (where keys usually ride), no token in
    the path."""
    bare = url.with_user(None).with_query(None).with_fragment(None)
    return str(bare.with_path(_OPAQUE.sub("***", bare.path), encoded=False))


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in the OS's words ("Connection refused"), never str(exc) (it may hold the URL)."""
    os_error = getattr(exc, "os_error", None)
    text = getattr(os_error, "strerror", None) or (type(os_error).__name__ if os_error else None)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _canonical(args: Mapping[str, Any]) -> str:
    return json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _query_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def _parse_arguments(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}  # some LLM APIs send "" for a tool without parameters
    try:
        args = json.loads(text)
    except ValueError:
        raise _Fail("bad_arguments", "arguments are not valid JSON") from None
    if not isinstance(args, dict):
        raise _Fail("bad_arguments", f"arguments must be a JSON object, got {type(args).__name__}")
    return args


def _check_json(text: str) -> str:
    if len(text.encode()) > MAX_BODY_BYTES:
        raise _Fail("too_large", f"result is larger than {MAX_BODY_BYTES} bytes")
    try:
        json.loads(text)
    except ValueError:
        raise _Fail("not_json", "the result is not JSON") from None
    return text


def _encode_result(value: Any) -> str:
    if isinstance(value, str):
        try:
            json.loads(value)
            return _check_json(value)
        except ValueError:
            pass
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        raise _Fail("not_json", f"the function returned {type(value).__name__}, not JSON data") from None
    return _check_json(text)


class ToolRunner:
    """Runs CallTool effects (the engine.ports.Tools protocol)."""

    def __init__(self, tools: Mapping[str, Any], *, clock: Callable[[], float] = time.monotonic,
                 session: aiohttp.ClientSession | None = None) -> None:
        self._tools = tools
        self._clock = clock
        self._session = session
        self._owns_session = session is None
        self._funcs: dict[str, Callable[..., Any]] = {}
        self._cache: dict[tuple[str, str], tuple[float, str]] = {}  # key -> (expires at, body)

    async def call(self, effect: CallTool) -> ToolResult:
        try:
            body, cached = await self._call(effect)
        except _Fail as f:
            body = json.dumps({"error": f.code, "detail": f.detail})
            return effect.result(t_ms=0, body=body, ok=False, error=f.code)
        return effect.result(t_ms=0, body=body, cached=cached)

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def _call(self, effect: CallTool) -> tuple[str, bool]:
        tool = self._tools.get(effect.name)
        if tool is None:
            raise _Fail("unknown_tool", f"no tool named {effect.name!r}")
        args = _parse_arguments(effect.arguments)
        hook = getattr(tool, "webhook", None)
        if hook is None:
            return await self._run_function(effect.name, tool, args), False
        ttl = getattr(hook, "cache_ttl_s", 0) or 0
        key = (effect.name, _canonical(args))
        if ttl > 0:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > self._clock():
                return hit[1], True
        body = await self._run_webhook(hook, args)
        if ttl > 0:
            self._store(key, body, ttl)
        return body, False

    def _store(self, key: tuple[str, str], body: str, ttl: float) -> None:
        now = self._clock()
        if len(self._cache) >= _CACHE_MAX:  # keep memory bounded on long-running servers
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[key] = (now + ttl, body)

    # ------------------------------------------------------------------------------------------ webhooks

    async def _run_webhook(self, hook: Any, args: dict[str, Any]) -> str:
        timeout_ms = getattr(hook, "timeout_ms", None) or DEFAULT_TIMEOUT_MS
        method = (getattr(hook, "method", None) or "POST").upper()
        headers = dict(getattr(hook, "headers", None) or {})
        url = URL(hook.url)
        if method == "GET":
            query = urlencode({k: _query_value(v) for k, v in args.items()})
            raw = f"{url.raw_query_string}&{query}" if url.raw_query_string else query
            # encoded=True: the server sees exactly the query string that was signed.
            bare = str(url.with_query(None).with_fragment(None))
            url = URL(bare + (f"?{raw}" if raw else ""), encoded=True)
            payload, data = raw, None
        else:
            payload = _canonical(args)
            data = payload.encode()
            headers["Content-Type"] = "application/json"
        secret = getattr(hook, "secret", None)
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, payload, int(time.time()))
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()  # lazily, so it binds to the running loop
        where = f"{method} {_public(url)}"  # every failure names the request, so a log reader can retry it
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                # Redirects are not followed: the request carries the tool's credentials (its headers and
                # signature), and a 30x to another host would hand them over (issue 11).
                async with self._session.request(method, url, data=data, headers=headers,
                                                 allow_redirects=False) as resp:
                    if 300 <= resp.status < 400:
                        raise _Fail("redirect", f"{where}: the tool's server answered HTTP {resp.status} (a redirect); "
                                    "webhooks do not follow redirects: set the tool's url to the final address")
                    if not 200 <= resp.status < 300:
                        raise _Fail(f"http_{resp.status}", f"{where}: the tool's server answered HTTP {resp.status}")
                    raw_body = await self._read_capped(resp, where)
        except TimeoutError:
            raise _Fail("timeout", f"{where}: no answer in {timeout_ms} ms") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise _Fail("connection", f"{where}: could not reach the tool's server ({_reason(exc)})") from None
        except aiohttp.ClientError as exc:
            raise _Fail("exception", f"{where}: {type(exc).__name__}") from None
        try:
            text = raw_body.decode(resp.charset or "utf-8")
        except (UnicodeDecodeError, LookupError):
            raise _Fail("not_json", f"{where}: the response is not text") from None
        try:
            return _check_json(text)
        except _Fail as f:
            raise _Fail(f.code, f"{where}: {f.detail}") from None

    @staticmethod
    async def _read_capped(resp: aiohttp.ClientResponse, where: str) -> bytes:
        if resp.content_length is not None and resp.content_length > MAX_BODY_BYTES:
            raise _Fail("too_large", f"{where}: the response is larger than {MAX_BODY_BYTES} bytes")
        buf = bytearray()
        # Read at most one byte past the cap; leaving the rest unread makes aiohttp close the connection.
        while chunk := await resp.content.read(MAX_BODY_BYTES + 1 - len(buf)):
            buf += chunk
            if len(buf) > MAX_BODY_BYTES:
                raise _Fail("too_large", f"{where}: the response is larger than {MAX_BODY_BYTES} bytes")
        return bytes(buf)

    # ------------------------------------------------------------------------------------------ callables

    def _resolve(self, name: str, target: str) -> Callable[..., Any]:
        fn = self._funcs.get(name)
        if fn is None:
            module, _, attr = target.partition(":")
            try:
                fn = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise _Fail("exception", f"cannot load {target} ({type(exc).__name__})") from None
            self._funcs[name] = fn
        return fn

    async def _run_function(self, name: str, tool: Any, args: dict[str, Any]) -> str:
        target = getattr(tool, "function", None)
        if not target:
            raise _Fail("unknown_tool", f"tool {name!r} has neither a webhook nor a function")
        fn = self._resolve(name, target)
        try:
            inspect.signature(fn).bind(**args)
        except TypeError as exc:
            raise _Fail("bad_arguments", str(exc)) from None  # names the parameter, not its value
        except ValueError:
            pass  # no introspectable signature (some builtins): let the call decide
        timeout_ms = getattr(fn, "timeout_ms", None) or getattr(tool, "timeout_ms", None)
        timeout_ms = timeout_ms or DEFAULT_TIMEOUT_MS
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                if inspect.iscoroutinefunction(fn):
                    value = await fn(**args)
                else:
                    # A thread keeps the loop free; on timeout or cancel the thread runs on to its end
                    # (Python cannot kill threads) but its result is dropped.
                    value = await asyncio.to_thread(fn, **args)
                    if inspect.isawaitable(value):
                        value = await value
        except TimeoutError:
            raise _Fail("timeout", f"no answer in {timeout_ms} ms") from None
        except Exception as exc:
            raise _Fail("exception", f"the function raised {type(exc).__name__}") from None
        return _encode_result(value)
