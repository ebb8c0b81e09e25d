"""Scripted calls: what the offline caller says and how fast the simulated providers answer.

Rules:
- A script is data (YAML): caller turns, provider latencies, canned tool results, scripted LLM replies.
- The scripted LLM's replies (``replies``, else the flow's local.replies) are answered by
  adapters/scripted.py, the same code the live `local` LLM runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.flow import Flow, ScriptedReply
from engine.flowcheck import unknown_name
from engine.flowload import Report, check_document
from engine.textfile import TextFileError, read_text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CallerTurn(_Strict):
    say: str | None = None
    dtmf: str | None = Field(None, pattern=r"^[0-9*#]$")
    noise_ms: int | None = Field(None, gt=0)  # a cough or a bump: speech to the VAD, no words
    silence: bool = False  # say nothing this time: let the agent's idle timer run
    hangup: bool = False
    #: Pause after the agent finished (or after the previous turn) before this turn starts.
    gap_ms: int = Field(600, ge=0)
    #: Start this long after the agent's audio began, over it (a barge-in), instead of waiting.
    barge_in_after_ms: int | None = Field(None, ge=0)


class Latency(_Strict):
    vad_start_ms: int = 60  # speech onset to SpeechStarted
    vad_stop_ms: int = 120  # speech end to SpeechStopped (the VAD's hangover, as callstate/providers.py)
    stt_interim_ms: int = 300  # interim results cadence
    stt_final_ms: int = 150  # Finalize (or the STT's own endpointing) to the final transcript
    llm_first_token_ms: int = 200
    llm_token_ms: int = 20
    tts_first_byte_ms: int = 100
    tts_chunk_ms: int = 200  # audio per TtsAudio chunk
    tts_realtime_factor: float = 0.2  # synthesis time / audio time
    tool_ms: int = 300
    caller_wpm: int = Field(170, gt=0)


class CannedTool(_Strict):
    body: Any = {"ok": True}
    latency_ms: int | None = None
    error: str | None = None


class CallScript(_Strict):
    flow: str | None = None  # a flow file, relative to the script; the embedded default otherwise
    seed: int = 0
    latency: Latency = Latency()
    caller: list[CallerTurn] = []
    replies: list[ScriptedReply] | None = None  # overrides the flow's local.replies
    #: Canned tool results; a tool not listed here runs for real (its webhook or function).
    tools: dict[str, CannedTool] = {}


class ScriptError(ValueError):
    pass


def is_script(path: str | Path, text: str | None = None) -> bool:
    """A call script rather than a flow: named *.call.yaml, or a mapping with `caller:` and no `name:`."""
    if str(path).endswith((".call.yaml", ".call.yml")):
        return True
    return text is not None and bool(re.search(r"^caller\s*:", text, re.M)) and not re.search(r"^name\s*:", text, re.M)


def check_script(path: str | Path, flow: Flow | None = None) -> Report:
    """Every problem of a call script at once, as file:line:column key.path: message (a flow's treatment:
    unknown keys with did-you-mean). With ``flow``, the tools it cans and its replies name must be the
    flow's: a canned `reserve_tabel` would otherwise be ignored and the real webhook called."""
    name = str(path)
    try:
        text = read_text(path)  # bounded: /dev/zero is a one-line error, not a MemoryError
    except TextFileError as exc:
        return Report(name, [str(exc)])

    def tools_exist(data: dict[str, Any], error: Any, _warn: Any) -> None:
        if flow is None:
            return
        known = list(flow.tools)
        canned = data.get("tools")
        for tool in canned if isinstance(canned, dict) else {}:
            if tool not in known:
                error(("tools", tool), unknown_name("tool", str(tool), known) + f" in flow '{flow.name}'")
        replies = data.get("replies")
        for i, reply in enumerate(replies if isinstance(replies, list) else []):
            tool = reply.get("tool") if isinstance(reply, dict) else None
            if isinstance(tool, str) and tool != "goto" and tool not in known:
                error(("replies", i, "tool"), unknown_name("tool", tool, known) + f" in flow '{flow.name}'")

    return check_document(text, name, CallScript, tools_exist)


def load_script(path: str | Path, flow: Flow | None = None) -> CallScript:
    report = check_script(path, flow)
    if report.errors:
        raise ScriptError("\n".join(report.errors))
    return report.value  # type: ignore[no-any-return]


def script_flow(script_path: str | Path, script: CallScript) -> str | None:
    """The flow a script names (`flow:`), relative to the script's own directory."""
    return os.path.normpath(Path(script_path).parent / script.flow) if script.flow else None


def speech_ms(text: str, wpm: int) -> int:
    return max(200, len(text.split()) * 60_000 // wpm)
