"""Fake Groq chat completions: ``POST /openai/v1/chat/completions`` streaming SSE as reference section 3.3.

Each request consumes the next item of ``script``: a ``Reply`` (streamed text and/or tool calls, with its
timing and stream faults) or an ``HttpError`` (429 with retry-after, 500...). When the script runs out,
every request gets ``Reply("OK.")``. Every request body is recorded in ``requests``.

``by_user`` scripts a conversation by turn instead of by arrival: a request whose last user message
contains a key takes that key's next item (a tool round trip keeps the same last user message, so a
turn's tool call and its answer after the result are consecutive items of one key). Requests that match
no key (a speculative request on an interim transcript, say) take from ``script`` as before, so the order
in which an agent starts, cancels and restarts requests does not shift the scripted answers.

Reasoning and the token budget (what each behaviour follows):
- A reasoning model reasons before it answers, and its reasoning tokens come out of
  ``max_completion_tokens`` (console.groq.com/docs/reasoning; groq SDK ``types/chat/
  completion_create_params.py``, ``max_completion_tokens``): past the budget the stream ends with
  ``finish_reason: "length"``, even with no content yet. One fake token is one whitespace-led word.
- ``reasoning_effort`` per family, and its default when unset (gpt-oss: low/medium/high, default medium;
  qwen3: none/default, qwen3.8-27b also low/medium/high): the SDK's ``reasoning_effort`` docstring, as
  tabled in adapters/reasoning.py. Another effort is a 400 (the real error text is unknown; the status is
  what Groq returns for a bad parameter, reference 3.4).
- How many tokens an effort spends is prompt-dependent and unknown; ``REASONING_TOKENS`` is a model of it
  in which gpt-oss's default (medium) spends more than the old 256-token budget, as users saw.
- Where reasoning goes: ``delta.reasoning`` (``include_reasoning`` defaults to true; ``reasoning_format:
  parsed``), ``<think>...</think>`` inside ``delta.content`` (``raw``: qwen3's default without tools), or
  nowhere (``hidden``, ``include_reasoning: false``); ``raw`` with tools and ``reasoning_format`` with
  ``include_reasoning`` are 400s (console.groq.com/docs/reasoning; the SDK says they are exclusive).
- ``Reply.stopped_early``: the last chunk carries ``x_groq.error`` ("An error string indicating why a stream
  was stopped early", SDK ``types/chat/chat_completion_chunk.py`` XGroq). The finish_reason that real
  streams send with it is unknown; the fake sends ``stop``.
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
#: Reasoning tokens an effort spends in this fake (a model: the real count depends on the prompt).
REASONING_TOKENS = {"none": 0, "low": 24, "default": 300, "medium": 300, "high": 1200}
#: Efforts each family takes, most specific first, and its effort when the request sets none (the SDK's
#: reasoning_effort docstring, read independently of adapters/reasoning.py). Other models do not reason.
EFFORTS = {"openai/gpt-oss-": ("low", "medium", "high"),
           "qwen/qwen3.8-27b": ("none", "default", "low", "medium", "high"),
           "qwen/qwen3": ("none", "default")}
SERVICE_DEFAULT = {"openai/gpt-oss-": "medium", "qwen/qwen3.8-27b": "medium", "qwen/qwen3": "default"}


def _family(model: str) -> str | None:
    return next((p for p in EFFORTS if model.startswith(p)), None)


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
    # faults: chunk counts leave reasoning chunks out (the role chunk counts, then the content)
    truncate_after: int | None = None  # end the stream after this many chunks, without [DONE]
    truncate_how: Literal["abort", "eof"] = "abort"  # abort: drop the TCP socket; eof: end the body cleanly
    error_after: int | None = None  # after this many chunks send an in-stream error object and end
    reasoning: str | None = None  # None: as many reasoning words as the model's effort spends (see above)
    stopped_early: str | None = None  # x_groq.error in the last chunk


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


def request_error(body: Mapping[str, Any]) -> str | None:
    """Why Groq would refuse this request's reasoning fields (400), or None."""
    model, effort = str(body.get("model", MODEL)), body.get("reasoning_effort")
    fam = _family(model)
    if effort is not None and (fam is None or effort not in EFFORTS[fam]):
        return f"reasoning_effort {effort!r} is not supported with this model"
    fmt = body.get("reasoning_format")
    if fmt is not None and body.get("include_reasoning") is not None:
        return "reasoning_format and include_reasoning cannot both be set"
    if fmt == "raw" and body.get("tools"):
        return "reasoning_format raw is not supported with tools"
    return None


def reasoning_of(reply: Reply, body: Mapping[str, Any]) -> tuple[list[str], str]:
    """The reasoning words this request spends, and where they go: "reasoning", "content" or "hidden"."""
    model = str(body.get("model", MODEL))
    prefix = _family(model)
    if prefix is None:
        return [], "hidden"  # not a reasoning model
    effort = body.get("reasoning_effort") or SERVICE_DEFAULT[prefix]
    words = _tokens(reply.reasoning) if reply.reasoning is not None else \
        [" thinking"] * REASONING_TOKENS[effort] if effort != "none" else []
    fmt = body.get("reasoning_format")
    if body.get("include_reasoning") is False or fmt == "hidden":
        return words, "hidden"
    if fmt == "raw" or (fmt is None and prefix.startswith("qwen/") and not body.get("tools")):
        return words, "content"
    return words, "reasoning"


def chunks(reply: Reply, model: str = MODEL, body: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects for ``reply``, as Groq streams them for ``body``."""
    body = body or {"model": model}
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1767225600, "model": model}
    budget = body.get("max_completion_tokens") or body.get("max_tokens") or 1 << 30

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                **extra}

    out = [chunk({"role": "assistant", "content": ""})]
    thought, where = reasoning_of(reply, body)
    spent = min(len(thought), budget)
    if where == "reasoning":
        out += [chunk({"reasoning": w}) for w in thought[:spent]]
    elif where == "content" and thought:
        words = ["<think>", *thought[:spent], *(["</think>\n\n"] if spent == len(thought) else [])]
        out += [chunk({"content": w}) for w in words]
    said = _tokens(reply.text)[:budget - spent]
    out += [chunk({"content": tok}) for tok in said]
    left = budget - spent - len(said)
    cut = len(said) < len(_tokens(reply.text)) or spent < len(thought)
    for i, call in enumerate(reply.tool_calls):
        frags = [""]  # the name's token, then the arguments in fragments (one token each)
        step = max(1, -(-len(call.arguments) // max(1, call.fragments)))
        frags += [call.arguments[j:j + step] for j in range(0, len(call.arguments), step)]
        if cut or len(frags) > left:  # a call cut off mid-arguments: stream what fits
            frags, cut = frags[:max(0, left)], True
        left -= len(frags)
        for j, part in enumerate(frags):
            head = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
            out.append(chunk({"tool_calls": [{"index": i, **head} if j == 0 else
                                             {"index": i, "function": {"arguments": part}}]}))
    finish = "length" if cut else reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
    n_out = budget - left if cut else spent + len(said) + sum(call.fragments + 1 for call in reply.tool_calls)
    usage = {"queue_time": 0.01, "prompt_tokens": 120, "prompt_time": 0.006, "completion_tokens": n_out,
             "completion_time": 0.05, "total_tokens": 120 + n_out, "total_time": 0.056}
    x_groq: dict[str, Any] = {"id": "req_fake", "usage": usage}
    if reply.stopped_early is not None:
        x_groq["error"] = reply.stopped_early
    out.append(chunk({}, finish, x_groq=x_groq))
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
        if (refused := request_error(rec.body)) is not None:
            return web.json_response({"error": {"message": refused, "type": "invalid_request_error"}},
                                     status=400)
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
        i = 0  # chunks sent, reasoning ones left out: what the faults count
        for n, obj in enumerate(chunks(reply, rec.body.get("model", MODEL), rec.body)):
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
            if n:
                await asyncio.sleep(reply.token_delay_s)
            await resp.write(f"data: {json.dumps(obj)}\n\n".encode())
            rec.chunks_sent += 1
            i += "reasoning" not in obj["choices"][0]["delta"]
        await resp.write(b"data: [DONE]\n\n")
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp
