"""Which adapters a flow runs with: built from the flow's provider names and the environment's keys."""

from __future__ import annotations

from collections.abc import Mapping

from engine.flow import Flow
from engine.runtime import Providers

# provider name -> environment variables it needs (keys only; never logged or printed with values)
_KEYS = {
    ("stt", "deepgram"): ("DEEPGRAM_API_KEY",),
    ("llm", "groq"): ("GROQ_API_KEY",),
    ("tts", "deepgram"): ("DEEPGRAM_API_KEY",),
    ("tts", "playht"): ("PLAYHT_API_KEY", "PLAYHT_USER_ID"),
}


def missing_keys(flow: Flow, env: Mapping[str, str]) -> list[str]:
    """Every variable the flow's providers need that is unset or empty, each named once, with its user."""
    wanted = [("stt", flow.stt.provider), ("llm", flow.llm.provider), ("tts", flow.tts.provider)]
    if flow.tts.fallback:
        wanted.append(("tts", flow.tts.fallback))
    out: list[str] = []
    for what, name in wanted:
        for key in _KEYS.get((what, name), ()):
            line = f"{key} (for {what}: {name})"
            if not env.get(key) and not any(x.startswith(key + " ") for x in out):
                out.append(line)
    return out


def _tts(name: str, flow: Flow, env: Mapping[str, str]):  # type: ignore[no-untyped-def]
    if name == "deepgram":
        from adapters.aura import DeepgramTts

        return DeepgramTts.from_env(env, voice=flow.tts.voice)
    if name == "playht":
        from adapters.playht import PlayHtTts

        return PlayHtTts.from_env(env, voice=flow.tts.voice, speed=flow.tts.speed)
    from adapters.speech import LocalTts

    return LocalTts(first_byte_ms=flow.local.latency.tts_first_byte_ms)


def _machine_vad():  # type: ignore[no-untyped-def]
    from adapters.vad import VadParams

    #: The machine's VAD reports a stop after 120 ms of silence, not the 300 ms that keeps a whole line in
    #: one turn: SpeechStopped is what tells a cough (< 250 ms) from a barge-in, and a 300 ms hangover
    #: would make every cough last 360 ms. Pauses inside a sentence then stop and restart speech, which
    #: the machine handles (the endpoint timer waits for the final transcript anyway).
    return VadParams(stop_ms=120)


def build_providers(flow: Flow, env: Mapping[str, str]) -> Providers:
    from adapters.tools import ToolRunner
    from adapters.vad import Vad

    vad_params = _machine_vad()

    if flow.stt.provider == "deepgram":
        from adapters.deepgram import DeepgramStt

        stt = DeepgramStt.from_env(env, model=flow.stt.model, language=flow.stt.language,
                                   keyterms=tuple(flow.stt.keyterms), endpointing_ms=flow.stt.endpointing_ms,
                                   utterance_end_ms=flow.stt.utterance_end_ms)
    else:
        from adapters.local import LocalStt

        stt = LocalStt(flow.local.caller, vad=Vad, final_ms=flow.local.latency.stt_final_ms)
    if flow.llm.provider == "groq":
        from adapters.groq import GroqLlm

        llm = GroqLlm.from_env(env, model=flow.llm.model, temperature=flow.llm.temperature,
                               max_tokens=flow.llm.max_tokens)
    else:
        from adapters.local import LocalLlm

        llm = LocalLlm(flow.local.replies, first_token_ms=flow.local.latency.llm_first_token_ms,
                       token_ms=flow.local.latency.llm_token_ms)
    fallback = _tts(flow.tts.fallback, flow, env) if flow.tts.fallback else None
    return Providers(stt=stt, llm=llm, tts=_tts(flow.tts.provider, flow, env), tools=ToolRunner(flow.tools),
                     vad=lambda: Vad(vad_params), tts_fallback=fallback)
