"""Groq streaming chat completions with tools -> LlmToken* / LlmToolCall* / LlmDone, or LlmError.

Rules:
- Imports engine.events and the groq SDK (plus httpx, the SDK's transport, for its stream errors).
- The SDK never retries (``max_retries=0``): a silent multi-second retry is worse for a caller than a quick
  fallback (reference 3.4). We retry once ourselves, and only before anything was emitted:
  429 after its retry-after (capped at 2 s, else we give up), 5xx / timeout / connection error at once.
  Each retry is a ProviderNotice; the final failure is an LlmError with a short text that never holds the key.
- Tool calls arrive as fragments keyed by index (reference 3.3); each is emitted whole when the stream ends.
- Cancellation (task.cancel) closes the HTTP response at once; nothing is emitted after it.
- Every event has ``t_ms=0`` (the runtime stamps arrival) and ``cause`` = the StartLlm's seq.
- Reasoning is never spoken nor put into context: ``delta.reasoning`` is dropped, and ``<think>...</think>``
  in the content (qwen3's ``raw`` format) is cut out. ``max_completion_tokens`` is the flow's reply budget
  plus a reasoning allowance for the effort, because reasoning tokens come out of the same budget.
- ``finish_reason: "length"`` speaks what came and puts a ProviderNotice on the record; with nothing to say
  it is an LlmError (the flow's fallback line). ``x_groq.error`` (the stream stopped early) is an LlmError.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import groq
import httpx
from groq import AsyncGroq

from adapters.env import need as _need
from adapters.reasoning import Reasoning, ThinkFilter, reasoning_for
from engine.events import Input, LlmDone, LlmError, LlmToolCall, ProviderNotice, StartLlm

Emit = Callable[[Input], None]
log = logging.getLogger(__name__)

GROQ_URL = "https://api.groq.com"  # the SDK appends /openai/v1/chat/completions
CHAT_PATH = "/openai/v1/chat/completions"  # groq SDK resources/chat/completions.py
REQUIRED_ENV = ("GROQ_API_KEY",)
#: Longest retry-after we wait for: past 2 s a caller is better served by a fallback phrase.
RETRY_AFTER_CAP_S = 2.0
#: When a 429 has no retry-after header: the SDK's own initial backoff (groq/_constants.py).
RETRY_AFTER_DEFAULT_S = 0.5
#: How long an idle pooled connection is kept. httpx's default is 5 s, shorter than the gap between two
#: requests of one call (the caller's line plus the agent's): each turn would open a new connection (TCP,
#: and TLS on a real network) on its critical path. The pool is shared by every call of the process.
KEEPALIVE_S = 60.0
POOL = httpx.Limits(max_connections=1000, max_keepalive_connections=1000, keepalive_expiry=KEEPALIVE_S)


class _Failure(Exception):
    def __init__(self, reason: str, retry_in_s: float | None = None, *, emitted: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason  # short and safe: "429", "500", "timeout", "truncated stream", ...
        self.retry_in_s = retry_in_s  # None: not retryable
        self.emitted = emitted  # tokens went out: a retry would repeat them, so never retry


class GroqLlm:
    """``engine.ports.Llm`` over Groq's OpenAI-compatible API."""

    REQUIRED_ENV = REQUIRED_ENV

    def __init__(self, api_key: str, *, model: str = "openai/gpt-oss-20b", temperature: float = 0.3,
                 max_tokens: int = 256, base_url: str | None = None, timeout_s: float = 10,
                 reasoning_effort: str | None = None) -> None:
        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens
        #: ValueError (one line) for an effort the model family does not take.
        self.reasoning: Reasoning = reasoning_for(model, reasoning_effort)
        self._key = api_key
        # base_url always explicit: with None the SDK would read GROQ_BASE_URL behind our back.
        # timeout_s bounds the connect and each read, so a stalled first byte fails after timeout_s.
        self._client = AsyncGroq(api_key=api_key, base_url=base_url or GROQ_URL, max_retries=0,
                                 timeout=timeout_s, http_client=groq.DefaultAsyncHttpxClient(limits=POOL))

    @classmethod
    def from_env(cls, env: Mapping[str, str], **settings: Any) -> GroqLlm:
        return cls(_need(env, "GROQ_API_KEY"), base_url=env.get("GROQ_BASE_URL") or None, **settings)

    async def aclose(self) -> None:
        await self._client.close()

    async def warm(self) -> str:
        """Have a connection open in the pool before the call's first request (run while the caller talks).

        ``GET /openai/v1/models`` (authenticated, no tokens spent) opens one when none is idle, DNS and TLS
        included, and checks the key on the way. Returns "" when ready, else what went wrong (for the log).
        """
        try:
            await self._client.models.with_raw_response.list()
        except groq.APIStatusError as e:
            return f"HTTP {e.status_code}"  # the connection is open all the same
        except groq.APIError as e:
            return type(e).__name__
        return ""

    async def stream(self, effect: StartLlm, emit: Emit) -> None:
        retried = False
        while True:
            try:
                await self._attempt(effect, emit)
                return
            except _Failure as f:
                if f.retry_in_s is not None and not retried and not f.emitted:
                    if f.retry_in_s > RETRY_AFTER_CAP_S:
                        emit(LlmError(t_ms=0, cause=effect.seq,
                                      message=f"groq: {f.reason}, retry-after {f.retry_in_s:g} s too long"))
                        return
                    retried = True
                    emit(ProviderNotice(t_ms=0, cause=effect.seq, provider="groq", what="retry",
                                        detail=f"{f.reason} after {f.retry_in_s:g} s"))
                    await asyncio.sleep(f.retry_in_s)
                    continue
                emit(LlmError(t_ms=0, cause=effect.seq, message=f"groq: {f.reason}"))
                return

    def _request(self, effect: StartLlm) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model, "messages": [m.as_openai() for m in effect.messages], "stream": True,
            "temperature": self.temperature, "max_completion_tokens": self.budget,
            **self.reasoning.request,
        }
        if effect.tools:
            kwargs["tools"] = [t.as_openai() for t in effect.tools]
        return kwargs

    @property
    def budget(self) -> int:
        """``max_completion_tokens``: the spoken reply's budget plus what the reasoning may take of it."""
        return self.max_tokens + self.reasoning.allowance

    async def _attempt(self, effect: StartLlm, emit: Emit) -> None:
        try:
            # The SDK's own request path (auth, base URL, timeout, its status errors) with the body as plain
            # JSON and the raw httpx response back: not create(), which walks the whole history through its
            # TypedDict transform on every request and builds pydantic models for every chunk (groq SDK
            # _base_client.py: post(); _process_response returns an httpx.Response as it is).
            response = await self._client.post(CHAT_PATH, cast_to=httpx.Response, body=self._request(effect),
                                               stream=True)
        except groq.RateLimitError as e:
            raise _Failure("429", _retry_after(e.response.headers)) from None
        except groq.InternalServerError as e:
            raise _Failure(str(e.status_code), 0.0) from None
        except groq.APITimeoutError:
            raise _Failure("timeout", 0.0) from None
        except groq.APIConnectionError:
            raise _Failure("connection error", 0.0) from None
        except groq.APIStatusError as e:
            raise _Failure(f"HTTP {e.status_code}: {self._safe(_error_text(e.body))}") from None

        calls: dict[int, list[str]] = {}  # index -> [id, name, arguments so far]
        finish: str | None = None
        stopped: str | None = None  # x_groq.error: why the stream stopped early
        emitted = False
        think = ThinkFilter()
        try:
            async for chunk in _chunks(response):
                x_groq = chunk.get("x_groq")
                if isinstance(x_groq, dict) and x_groq.get("error"):
                    stopped = str(x_groq["error"])
                for choice in chunk.get("choices") or ():
                    if choice.get("index", 0) != 0:
                        continue
                    delta = choice.get("delta") or {}  # delta["reasoning"] is never read: not for the caller
                    content = delta.get("content")
                    if content and (text := think.feed(content)):
                        emitted = True
                        emit(effect.token(t_ms=0, text=text))
                    for frag in delta.get("tool_calls") or ():
                        call = calls.setdefault(frag.get("index", 0), ["", "", ""])
                        call[0] = frag.get("id") or call[0]
                        function = frag.get("function") or {}
                        call[1] = function.get("name") or call[1]
                        call[2] += function.get("arguments") or ""
                    finish = choice.get("finish_reason") or finish
        except _StreamError as e:  # an error object inside the stream (reference 3.3): not retried
            raise _Failure(f"stream error: {self._safe(e.message)}", emitted=emitted) from None
        except httpx.TimeoutException:
            raise _Failure("timeout mid-stream" if emitted else "timeout", 0.0, emitted=emitted) from None
        except (httpx.TransportError, ValueError):  # ValueError: a chunk that is not JSON (a cut body)
            raise _Failure("truncated stream", 0.0, emitted=emitted) from None
        finally:
            await response.aclose()  # on every exit: done, error, cancel
        if stopped is not None:  # groq types/chat/chat_completion_chunk.py XGroq.error
            raise _Failure(f"stream stopped early: {self._safe(stopped)}", emitted=emitted)
        if finish is None:  # the body ended cleanly but without a finish_reason / [DONE]
            raise _Failure("truncated stream", 0.0, emitted=emitted)
        if tail := think.flush():
            emitted = True
            emit(effect.token(t_ms=0, text=tail))
        if finish == "length":
            calls.clear()  # a tool call cut off mid-arguments cannot run
            if not emitted:  # the budget went on reasoning: nothing to say
                raise _Failure(f"length: {self.budget} tokens ran out before a reply ({self.reasoning.label})")
            detail = f"reply cut at max_completion_tokens={self.budget} ({self.reasoning.label})"
            log.warning("groq: %s", detail)
            emit(ProviderNotice(t_ms=0, cause=effect.seq, provider="groq", what="length", detail=detail))
        for index in sorted(calls):
            call_id, name, arguments = calls[index]
            emit(LlmToolCall(t_ms=0, cause=effect.seq, tool_call_id=call_id, name=name, arguments=arguments))
        emit(LlmDone(t_ms=0, cause=effect.seq, finish_reason=finish))

    def _safe(self, text: str) -> str:
        return _redact(text, self._key)


class _StreamError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


async def _chunks(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON chunks of a chat completion's server-sent events, up to ``[DONE]``.

    As the SDK's AsyncStream reads them (groq/_streaming.py): an event whose data holds ``error`` raises with
    the error's message; events with another name are skipped. The SSE format: ``event:`` and ``data:``
    fields, a blank line ends an event, a line starting with ``:`` is a comment.
    """
    event: str | None = None
    data: list[str] = []
    lines = response.aiter_lines()
    async for line in lines:
        if line:
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value[1:] if value.startswith(" ") else value)
            elif name == "event":
                event = value.strip()
            continue
        if data:
            text = "\n".join(data)
            if text.startswith("[DONE]"):
                async for _ in lines:  # read the body to its end, or httpx drops the connection from the pool
                    pass
                return
            obj = json.loads(text)
            if isinstance(obj, dict):
                if obj.get("error") and event in (None, "error"):
                    error = obj["error"]
                    message = error.get("message") if isinstance(error, dict) else None
                    raise _StreamError(message if isinstance(message, str) and message
                                       else "An error occurred during streaming")
                if event is None:
                    yield obj
        event, data = None, []


def _retry_after(headers: httpx.Headers) -> float:
    """Seconds to wait, from retry-after-ms or retry-after (seconds or an HTTP date), as the SDK reads it."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_tz(value)
            if when is not None:
                return max(0.0, email.utils.mktime_tz(when) - time.time())
    return RETRY_AFTER_DEFAULT_S


def _error_text(body: object) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(body.get("message"), str):
            return body["message"]
    return "error"


def _redact(text: str, key: str) -> str:
    text = text.replace(key, "***") if key else text
    return text if len(text) <= 160 else text[:157] + "..."



def from_env(env: Mapping[str, str], **settings: Any) -> GroqLlm:
    """A GroqLlm from GROQ_API_KEY (and GROQ_BASE_URL, for a proxy or a fake); settings as the constructor."""
    return GroqLlm.from_env(env, **settings)
