"""Scripted calls: what the offline caller says and how fast the simulated providers answer.

Rules:
- A script is data (YAML): caller turns, provider latencies, canned tool results, scripted LLM replies.
- The scripted LLM's replies (``replies``, else the flow's local.replies) are answered by
  adapters/scripted.py, the same code the live `local` LLM runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.flow import ScriptedReply
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


def load_script(path: str | Path) -> CallScript:
    p = Path(path)
    try:
        data = yaml.safe_load(read_text(p)) or {}
        return CallScript.model_validate(data)
    except TextFileError as exc:
        raise ScriptError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise ScriptError(f"{p}: not valid YAML: {exc}") from None
    except RecursionError:  # PyYAML's composer and pydantic recurse per level of nesting
        raise ScriptError(f"{p}: nested too deeply") from None
    except ValidationError as exc:
        lines = [f"{p}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ScriptError("\n".join(lines)) from None


def speech_ms(text: str, wpm: int) -> int:
    return max(200, len(text.split()) * 60_000 // wpm)
