"""Groq reasoning models: which ``reasoning_effort`` each family takes, our default, and its token allowance.

Sources: groq SDK ``types/chat/completion_create_params.py`` (``reasoning_effort``: gpt-oss takes
low/medium/high with medium the default; qwen3 takes none/default, qwen/qwen3.8-27b also low/medium/high;
``reasoning_format`` and ``include_reasoning`` are mutually exclusive) and console.groq.com/docs/reasoning
(reasoning comes back in ``reasoning`` by default (``include_reasoning: true``); ``raw`` puts it inside
``<think>`` tags in the content and is qwen3's default without tools; reasoning tokens are output tokens, so
they come out of ``max_completion_tokens``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Every effort the SDK's ``reasoning_effort`` Literal admits.
EFFORTS = ("none", "default", "low", "medium", "high")


@dataclass(frozen=True)
class Family:
    prefix: str  # model ids starting with this
    efforts: tuple[str, ...]  # what Groq accepts for them (empty: the model does not reason)
    default: str | None  # ours: the lowest first-token latency that still answers
    request: Mapping[str, Any] = field(default_factory=dict)  # how reasoning comes back (never in content)


# Most specific prefix first.
FAMILIES = (
    # gpt-oss cannot turn reasoning off; "low" spends the fewest tokens before the first word.
    Family("openai/gpt-oss-", ("low", "medium", "high"), "low"),
    Family("qwen/qwen3.8-27b", ("none", "default", "low", "medium", "high"), "none",
           {"reasoning_format": "parsed"}),
    # "parsed" so that a reasoning run (effort "default") never puts <think> into the content.
    Family("qwen/qwen3", ("none", "default"), "none", {"reasoning_format": "parsed"}),
    *(Family(p, (), None) for p in ("llama-", "meta-llama/", "moonshotai/", "allam-", "gemma")),
)

#: Tokens of reasoning the budget allows on top of the reply, by effort. Only a ceiling (Groq bills what
#: is generated); real counts vary with the prompt, so these are generous for a phone turn.
ALLOWANCE = {"none": 0, "low": 512, "default": 2048, "medium": 2048, "high": 8192}


@dataclass(frozen=True)
class Reasoning:
    effort: str | None  # sent as reasoning_effort (None: not sent)
    allowance: int  # added to max_completion_tokens
    request: Mapping[str, Any]  # every reasoning field of the request

    @property
    def label(self) -> str:
        return f"reasoning_effort={self.effort}" if self.effort else "no reasoning_effort"


def family(model: str) -> Family | None:
    return next((f for f in FAMILIES if model.startswith(f.prefix)), None)


def reasoning_for(model: str, effort: str | None = None) -> Reasoning:
    """The reasoning settings for ``model``; ValueError (one line) for an effort its family does not take."""
    fam = family(model)
    if fam is not None and not fam.efforts:
        if effort is not None:
            raise ValueError(f"reasoning_effort: {model} does not reason; remove it")
        return Reasoning(None, 0, {})
    allowed = fam.efforts if fam is not None else EFFORTS  # an unknown model: what the SDK admits
    if effort is not None and effort not in allowed:
        raise ValueError(f"reasoning_effort: {effort!r} is not one of {', '.join(allowed)} for {model}")
    chosen = effort if effort is not None else (fam.default if fam is not None else None)
    extra = dict(fam.request) if fam is not None else {}
    if chosen is not None:
        extra["reasoning_effort"] = chosen
    return Reasoning(chosen, ALLOWANCE[chosen] if chosen else 0, extra)


class ThinkFilter:
    """Cuts ``<think>...</think>`` out of streamed content, tags split across chunks included."""

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self) -> None:
        self._held = ""  # text that may be the start of a tag
        self._inside = False

    def feed(self, text: str) -> str:
        if not self._held and not self._inside and "<" not in text:
            return text  # the common chunk: no tag can start here
        buf, out = self._held + text, []
        self._held = ""
        while buf:
            tag = self.CLOSE if self._inside else self.OPEN
            at = buf.find(tag)
            if at >= 0:
                if not self._inside:
                    out.append(buf[:at])
                buf, self._inside = buf[at + len(tag):], not self._inside
                continue
            keep = _partial_suffix(buf, tag)  # a tag may be cut by the chunk boundary
            if not self._inside:
                out.append(buf[:len(buf) - keep])
            self._held = buf[len(buf) - keep:] if keep else ""
            break
        return "".join(out)

    def flush(self) -> str:
        """What is held at the end of the stream (an unfinished think block is dropped)."""
        held, self._held = self._held, ""
        return "" if self._inside else held


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
