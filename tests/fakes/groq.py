"""Fake Groq chat completions: ``POST /openai/v1/chat/completions`` streaming SSE as reference section 3.3.

Each request consumes the next item of ``script``: a ``Reply`` (streamed text and/or tool calls, with its
timing and stream faults) or an ``HttpError`` (429 with retry-after, 500...). When the script runs out,
every request gets ``Reply("OK.")``. Every request body is recorded in ``requests``.

``by_user`` scripts a conversation by turn instead of by arrival: a request whose last user message
contains a key takes that key's next item (a tool round trip keeps the same last user message, so a
turn's tool call and its answer after the result are consecutive items of one key). Requests that match
no key (a speculative request on an interim transcript, say) take from ``script`` as before, so the order
in which an agent starts, cancels and restarts requests does not shift the scripted answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from tests.fakes.base import FakeServer

MODEL = "openai/gpt-oss-20b"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, sent in ``fragments`` pieces
    id: str = "call_1"
    fragments: int = 3


@dataclass(frozen=True)
class Reply:
    text: str = ""
    tool_calls: Sequence[ToolCall] = ()
    finish_reason: str | None = None  # default: tool_calls when there are any, else stop
    first_byte_s: float = 0.0  # before the response headers (past the client's timeout: a timeout)
    ttft_s: float = 0.0  # after the headers, before the first chunk
    token_delay_s: float = 0.0  # between chunks
    truncate_after: int | None = None  # end the stream after this many chunks, without [DONE]
    truncate_how: Literal["abort", "eof"] = "abort"  # abort: drop the TCP socket; eof: end the body cleanly
    error_after: int | None = None  # after this many chunks send an in-stream error object and end


@dataclass(frozen=True)
class HttpError:
    status: int
    retry_after: str | None = None
    retry_after_ms: str | None = None
    message: str = "fake failure"
    delay_s: float = 0.0  # before answering (a slow failure)


@dataclass
class GroqRequest:
    body: dict[str, Any]
    headers: dict[str, str]
    chunks_sent: int = 0
    disconnected: bool = False  # the client went away before the stream ended
    key: str | None = None  # the ``by_user`` key it matched, if any
    served: Reply | HttpError | None = None  # what it was answered with

    @property
    def last_user(self) -> str:
        """The content of the request's last user message ("" when there is none)."""
        for msg in reversed(self.body.get("messages", [])):
            if msg.get("role") == "user" and isinstance(msg.get("content"), str):
                return str(msg["content"])
        return ""


def _tokens(text: str) -> list[str]:
    return re.findall(r"\s*\S+", text) if text else []


def chunks(reply: Reply, model: str = MODEL) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects for ``reply``, as Groq streams them."""
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1767225600, "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                **extra}

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": tok}) for tok in _tokens(reply.text)]
    for i, call in enumerate(reply.tool_calls):
        out.append(chunk({"tool_calls": [{"index": i, "id": call.id, "type": "function",
                                          "function": {"name": call.name, "arguments": ""}}]}))
        step = -(-len(call.arguments) // max(1, call.fragments))
        for j in range(0, len(call.arguments), max(1, step)):
            out.append(chunk({"tool_calls": [{"index": i,
                                              "function": {"arguments": call.arguments[j:j + step]}}]}))
    finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
    n_out = len(_tokens(reply.text)) + 1
    usage = {"queue_time": 0.01, "prompt_tokens": 120, "prompt_time": 0.006, "completion_tokens": n_out,
             "completion_time": 0.05, "total_tokens": 120 + n_out, "total_time": 0.056}
    out.append(chunk({}, finish, x_groq={"id": "req_fake", "usage": usage}))
    return out


class GroqFake(FakeServer):
    def __init__(self, script: Sequence[Reply | HttpError] = (), *, api_key: str = "test-key",
                 by_user: Mapping[str, Sequence[Reply | HttpError]] | None = None) -> None:
        super().__init__()
        self.script = list(script)
        self.api_key = api_key
        self.by_user = {key: list(items) for key, items in (by_user or {}).items()}
        self.requests: list[GroqRequest] = []
        self.model_lists = 0  # GET /openai/v1/models: the adapter's connection warm-up
        self.peers: list[tuple[str, int]] = []  # the client address of every request, in order (connection reuse)

    def _next(self, rec: GroqRequest) -> Reply | HttpError:
        for key, items in self.by_user.items():
            if key in rec.last_user:
                rec.key = key
                if items:
                    return items.pop(0)
                break
        return self.script.pop(0) if self.script else Reply("OK.")

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/openai/v1/chat/completions", self._completions)
        app.router.add_get("/openai/v1/models", self._models)

    async def _models(self, request: web.Request) -> web.Response:
        """``GET /openai/v1/models`` (groq SDK resources/models.py, types/model_list_response.py)."""
        self.model_lists += 1
        self.peers.append(request.transport.get_extra_info("peername") if request.transport else ("", 0))
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "Invalid API Key", "type": "invalid_request_error",
                                                "code": "invalid_api_key"}}, status=401)
        return web.json_response({"object": "list", "data": [
            {"id": MODEL, "object": "model", "created": 1754438400, "owned_by": "OpenAI"}]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "Invalid API Key", "type": "invalid_request_error",
                                                "code": "invalid_api_key"}}, status=401)
        self.peers.append(request.transport.get_extra_info("peername") if request.transport else ("", 0))
        rec = GroqRequest(body=await request.json(), headers=dict(request.headers))
        self.requests.append(rec)
        item = rec.served = self._next(rec)
        if isinstance(item, HttpError):
            await asyncio.sleep(item.delay_s)
            headers = {k: v for k, v in (("retry-after", item.retry_after),
                                         ("retry-after-ms", item.retry_after_ms)) if v is not None}
            return web.json_response({"error": {"message": item.message, "type": "fake"}},
                                     status=item.status, headers=headers)
        try:
            return await self._stream(request, rec, item)
        except (ConnectionError, asyncio.CancelledError):
            rec.disconnected = True
            raise

    async def _stream(self, request: web.Request, rec: GroqRequest, reply: Reply) -> web.StreamResponse:
        await asyncio.sleep(reply.first_byte_s)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await asyncio.sleep(reply.ttft_s)
        for i, obj in enumerate(chunks(reply, rec.body.get("model", MODEL))):
            if reply.error_after is not None and i >= reply.error_after:
                error = {"error": {"message": "fake stream error", "type": "internal_server_error"}}
                await resp.write(f"data: {json.dumps(error)}\n\n".encode())
                await resp.write_eof()
                return resp
            if reply.truncate_after is not None and i >= reply.truncate_after:
                if reply.truncate_how == "abort" and request.transport is not None:
                    request.transport.abort()  # no terminating chunk: the client sees an incomplete body
                else:
                    await resp.write_eof()
                return resp
            if i:
                await asyncio.sleep(reply.token_delay_s)
            await resp.write(f"data: {json.dumps(obj)}\n\n".encode())
            rec.chunks_sent += 1
        await resp.write(b"data: [DONE]\n\n")
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp
