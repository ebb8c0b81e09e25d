"""Every provider a flow can name, in one table: its options and their defaults, its keys, its builder.

Rules:
- This is the one module that knows provider names, models and voices. A flow holds its choice as an opaque
  ``engine.flow.ProviderConfig`` (``{provider, **options}``); the flow loader is handed ``REGISTRY`` and
  checks both against this table, so a mistake comes back as ``file:line:col key.path: message``.
- To add a provider: an options model and one ``Provider`` row in PROVIDERS (its keys and builder included).
  To add an option: one field on its model (with the default's source in a comment), read in the builder.
- Importing this module imports no vendor SDK: a builder imports its adapter when it runs.
- Keys come from the environment and are only ever named, never printed or logged with their values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.flow import Flow, ProviderConfig
from engine.liveparts import Providers

Kind = Literal["stt", "llm", "tts"]
KINDS: tuple[Kind, ...] = ("stt", "llm", "tts")


class Options(BaseModel):
    """A provider's whole config as a flow writes it: the name (checked against PROVIDERS), then options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The provider's name (the kind's default when omitted).
    provider: str | None = None


# ------------------------------------------------------------------------------------------------ STT


class SttOptions(Options):
    #: Ask the STT for its final as soon as the local VAD hears the caller stop (Deepgram's Finalize): the
    #: final then comes ~endpointing_ms sooner than the STT's own endpointing would send it.
    finalize_on_vad_stop: bool = True

    @property
    def own_endpointing_ms(self) -> int:
        """Silence after which the STT sends a final of its own accord (what the offline driver models)."""
        return 0


class DeepgramSttOptions(SttOptions):
    #: Deepgram's model (nova-3 and its variants).
    model: str = "nova-3"
    #: The language spoken, as a BCP-47 tag (en-US).
    language: str = "en-US"
    #: Words and names to recognise better (Deepgram keyterm prompting).
    keyterms: list[str] = []
    #: Deepgram's own endpointing (ms of silence before speech_final); 300 suits conversation.
    endpointing_ms: int = Field(300, ge=10)
    #: Deepgram's minimum for utterance_end_ms is 1000.
    utterance_end_ms: int = Field(1000, ge=1000)

    @property
    def own_endpointing_ms(self) -> int:
        return self.endpointing_ms


class LocalSttOptions(SttOptions):
    """The script player: the flow's ``local.caller`` lines, one per utterance the local VAD hears."""


class LocalAsrOptions(SttOptions):
    """Real offline recognition: PocketSphinx with the en-us model its wheel ships (adapters/asr.py)."""

    #: Checked against the model's dictionary at start: PocketSphinx's n-gram search takes no runtime boost,
    #: so a keyterm word it cannot spell is named in the log (it can never be heard).
    keyterms: list[str] = []
    #: How often an interim transcript may come while the caller speaks (Deepgram's come about every 300 ms).
    interim_ms: int = Field(300, ge=60)
    #: End a final with a full stop (PocketSphinx writes none): the endpoint then waits on_punctuation_ms,
    #: as after Deepgram's punctuated finals, unless the last word trails off ("and", "um").
    punctuate: bool = True


# ------------------------------------------------------------------------------------------------ LLM


class GroqOptions(Options):
    #: Groq retired llama-3.3-70b-versatile and llama-3.1-8b-instant on 2026-08-16; gpt-oss-20b is the
    #: lowest-latency model it serves today.
    model: str = "openai/gpt-oss-20b"
    #: Sampling temperature, 0 to 2; lower is steadier.
    temperature: float = Field(0.3, ge=0, le=2)
    #: The spoken reply's budget; the request adds the reasoning effort's allowance (adapters/reasoning.py).
    max_tokens: int = Field(256, gt=0)
    #: None: the family's low-latency default ("low" for gpt-oss, "none" for qwen3; groq SDK
    #: completion_create_params.py documents what each family takes).
    reasoning_effort: str | None = None

    @model_validator(mode="after")
    def _effort_fits_the_model(self) -> GroqOptions:
        from adapters.reasoning import reasoning_for

        reasoning_for(self.model, self.reasoning_effort)  # ValueError, one line, for the loader to place
        return self


class LocalLlmOptions(Options):
    """Scripted replies from the flow's ``local.replies`` (adapters/scripted.py picks them)."""


# ------------------------------------------------------------------------------------------------ TTS


class TtsOptions(Options):
    #: Another TTS to use when this one fails; it gets the options below that it also has (voice, speed).
    fallback: str | None = None

    @model_validator(mode="after")
    def _fallback_is_a_tts(self) -> TtsOptions:
        if self.fallback is not None:
            row = PROVIDERS.get(("tts", self.fallback))
            if row is None:
                raise ValueError("fallback must be one of: " + ", ".join(names("tts")))
            try:
                fallback_options(self, row)
            except ValidationError as exc:
                missing = [str(e["loc"][0]) for e in exc.errors() if e["type"] == "missing"]
                raise ValueError(f"the fallback {self.fallback} needs {', '.join(missing) or 'other options'}") \
                    from None
        return self


class DeepgramTtsOptions(TtsOptions):
    #: Deepgram Aura's voice (aura-2-thalia-en, ...).
    voice: str = "aura-2-thalia-en"


class PlayHtOptions(TtsOptions):
    #: The voice to speak with.
    voice: str = "aura-2-thalia-en"  # kept from the shared default; PlayHT-compatible hosts name their own
    #: Speaking rate (1.0: normal).
    speed: float = Field(1.0, gt=0, le=4)


class LocalTtsOptions(TtsOptions):
    """adapters/speech.py: espeak-ng where installed, else a speech-like signal of realistic length."""


class EspeakTtsOptions(TtsOptions):
    """Real offline speech: espeak-ng from the espeakng-loader wheel (adapters/espeak.py)."""

    #: An espeak-ng voice name, e.g. en-us, en-gb, de (the espeak-ng-data in the espeakng-loader wheel).
    voice: str = "en-us"
    #: Conversational English is 150-180 words a minute; 170 is a brisk agent.
    words_per_minute: int = Field(170, ge=80, le=450)


# ---------------------------------------------------------------------------------------- the builders

Builder = Callable[[Any, Flow, Mapping[str, str]], Any]


def _deepgram_stt(o: DeepgramSttOptions, flow: Flow, env: Mapping[str, str]) -> Any:
    from adapters.deepgram import DeepgramStt

    return DeepgramStt.from_env(env, model=o.model, language=o.language, keyterms=tuple(o.keyterms),
                                endpointing_ms=o.endpointing_ms, utterance_end_ms=o.utterance_end_ms)


def _local_stt(o: LocalSttOptions, flow: Flow, env: Mapping[str, str]) -> Any:
    from adapters.local import LocalStt
    from adapters.vad import Vad

    return LocalStt(flow.local.caller, vad=Vad, final_ms=flow.local.latency.stt_final_ms)


def _local_asr(o: LocalAsrOptions, flow: Flow, env: Mapping[str, str]) -> Any:
    from adapters.asr import LocalAsr
    from adapters.vad import Vad

    return LocalAsr(vad=Vad, keyterms=o.keyterms, interim_ms=o.interim_ms, punctuate=o.punctuate)


def _groq(o: GroqOptions, flow: Flow, env: Mapping[str, str]) -> Any:
    from adapters.groq import GroqLlm

    return GroqLlm.from_env(env, model=o.model, temperature=o.temperature, max_tokens=o.max_tokens,
                            reasoning_effort=o.reasoning_effort)


def _local_llm(o: LocalLlmOptions, flow: Flow, env: Mapping[str, str]) -> Any:
    from adapters.local import LocalLlm

    lat = flow.local.latency
    return LocalLlm(flow.local.replies, first_token_ms=lat.llm_first_token_ms, token_ms=lat.llm_token_ms)


def _deepgram_tts(o: DeepgramTtsOptions, flow: Flow, env: Mapping[str, str]) -> Any:
    from adapters.aura import DeepgramTts

    return DeepgramTts.from_env(env, voice=o.voice)


def _playht(o: PlayHtOptions, flow: Flow, env: Mapping[str, str]) -> Any:
    from adapters.playht import PlayHtTts

    return PlayHtTts.from_env(env, voice=o.voice, speed=o.speed)


def _local_tts(o: LocalTtsOptions, flow: Flow, env: Mapping[str, str]) -> Any:
    from adapters.speech import LocalTts

    return LocalTts(first_byte_ms=flow.local.latency.tts_first_byte_ms)


def _espeak_tts(o: EspeakTtsOptions, flow: Flow, env: Mapping[str, str]) -> Any:
    from adapters.espeak import EspeakTts

    return EspeakTts(voice=o.voice, words_per_minute=o.words_per_minute)


# ------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Provider:
    kind: Kind
    name: str
    options: type[Options]
    keys: tuple[str, ...]  # environment variables it needs (names only)
    build: Builder
    #: Environment variables without which it cannot work at all, each with why (said in one line).
    needs: tuple[tuple[str, str], ...] = ()


PROVIDERS: dict[tuple[Kind, str], Provider] = {
    (p.kind, p.name): p
    for p in (
        Provider("stt", "deepgram", DeepgramSttOptions, ("DEEPGRAM_API_KEY",), _deepgram_stt),
        Provider("stt", "local", LocalSttOptions, (), _local_stt),
        Provider("stt", "local-asr", LocalAsrOptions, (), _local_asr),
        Provider("llm", "groq", GroqOptions, ("GROQ_API_KEY",), _groq),
        Provider("llm", "local", LocalLlmOptions, (), _local_llm),
        Provider("tts", "deepgram", DeepgramTtsOptions, ("DEEPGRAM_API_KEY",), _deepgram_tts),
        Provider("tts", "playht", PlayHtOptions, ("PLAYHT_API_KEY", "PLAYHT_USER_ID"), _playht,
                 needs=(("PLAYHT_BASE_URL", "PlayHT's public API closed at the end of 2025; set it to a "
                                            "PlayHT-compatible server"),)),
        Provider("tts", "local", LocalTtsOptions, (), _local_tts),
        Provider("tts", "local-tts", EspeakTtsOptions, (), _espeak_tts),
    )
}

#: The standard stack (README): a flow that names no provider runs on these.
DEFAULTS: dict[Kind, str] = {"stt": "deepgram", "llm": "groq", "tts": "deepgram"}


def names(kind: str) -> list[str]:
    return [name for k, name in PROVIDERS if k == kind]


def provider(kind: Kind, config: ProviderConfig) -> Provider:
    """The row a (validated) config names; its default when it names none."""
    return PROVIDERS[(kind, config.provider or DEFAULTS[kind])]


def options(kind: Kind, config: ProviderConfig) -> Options:
    """A flow's (validated) config as its provider's typed options, defaults filled in."""
    return provider(kind, config).options.model_validate(config.model_dump())


def stt_options(flow: Flow) -> SttOptions:
    o = options("stt", flow.stt)
    assert isinstance(o, SttOptions), "every STT's options derive from SttOptions"
    return o


def fallback_options(primary: TtsOptions, row: Provider) -> Options:
    shared = {k: v for k, v in primary.model_dump().items()
              if k in row.options.model_fields and k not in ("provider", "fallback")}
    return row.options.model_validate(shared)


class Registry:
    """What the flow loader asks of this table (engine.flowload.ProviderTable), engine never importing it."""

    kinds = KINDS

    def names(self, kind: str) -> list[str]:
        return names(kind)

    def options(self, kind: str, name: str | None) -> type[BaseModel] | None:
        row = PROVIDERS.get((kind, name or DEFAULTS[kind]))  # type: ignore[index]
        return None if row is None else row.options

    def default_options(self, kind: str) -> type[BaseModel]:
        return PROVIDERS[(kind, DEFAULTS[kind])].options  # type: ignore[index]


REGISTRY = Registry()


# ---------------------------------------------------------------------------------------- a flow's set


def _chosen(flow: Flow) -> list[tuple[Kind, str]]:
    wanted: list[tuple[Kind, str]] = [(k, provider(k, getattr(flow, k)).name) for k in KINDS]
    fallback = options("tts", flow.tts)
    if isinstance(fallback, TtsOptions) and fallback.fallback:
        wanted.append(("tts", fallback.fallback))
    return wanted


def refusals(flow: Flow, env: Mapping[str, str]) -> list[str]:
    """One line for each provider the flow names that cannot work in this environment, saying why."""
    return [f"{kind}: {name} needs {var}: {why}" for kind, name in dict.fromkeys(_chosen(flow))
            for var, why in PROVIDERS[(kind, name)].needs if not env.get(var)]


def missing_keys(flow: Flow, env: Mapping[str, str]) -> list[str]:
    """Every variable the flow's providers need that is unset or empty, each named once, with its user."""
    out: list[str] = []
    for kind, name in _chosen(flow):
        for key in PROVIDERS[(kind, name)].keys:
            if not env.get(key) and not any(x.startswith(key + " ") for x in out):
                out.append(f"{key} (for {kind}: {name})")
    return out


def _machine_vad() -> Any:
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
    built = {k: provider(k, getattr(flow, k)).build(options(k, getattr(flow, k)), flow, env) for k in KINDS}
    tts = options("tts", flow.tts)
    fallback = None
    if isinstance(tts, TtsOptions) and tts.fallback:
        row = PROVIDERS[("tts", tts.fallback)]
        fallback = row.build(fallback_options(tts, row), flow, env)
    return Providers(stt=built["stt"], llm=built["llm"], tts=built["tts"], tools=ToolRunner(flow.tools),
                     vad=lambda: Vad(vad_params), tts_fallback=fallback,
                     finalize_on_vad_stop=stt_options(flow).finalize_on_vad_stop)


# ------------------------------------------------------------------------------- choosing at the command line

#: What `engine talk` runs for a kind whose provider cannot run here (a key is missing) or, for STT, does not
#: listen (the ``local`` script player): the real offline stack, and the flow's scripted replies.
KEYLESS: dict[Kind, str] = {"stt": "local-asr", "llm": "local", "tts": "local-tts"}
#: Options that mean the same to every provider of a kind, so they survive a change of provider. A voice or
#: a model name is the vendor's own and does not.
PORTABLE = ("keyterms",)


class ChoiceError(ValueError):
    pass


def with_provider(flow: Flow, kind: Kind, name: str) -> Flow:
    """The flow with ``kind`` run by ``name``: portable options kept, the rest back to the new one's defaults."""
    if (kind, name) not in PROVIDERS:
        raise ChoiceError(f"--{kind} {name}: no such provider (one of: {', '.join(names(kind))})")
    current = getattr(flow, kind)
    if provider(kind, current).name == name:
        return flow
    kept = {k: v for k, v in current.options.items()
            if k in PORTABLE and k in PROVIDERS[(kind, name)].options.model_fields}
    return flow.model_copy(update={kind: ProviderConfig(provider=name, **kept)})


def choose(flow: Flow, env: Mapping[str, str], overrides: Mapping[str, str | None], *,
           keyless: bool) -> tuple[Flow, list[str]]:
    """The flow with the providers this run uses, and one line per kind saying which and why.

    An override (``--stt NAME``) always wins. With ``keyless`` (``engine talk``), a provider whose keys are
    not all set is replaced by its KEYLESS twin, as is the ``local`` script player for STT (a person talks).
    """
    lines = []
    for kind in KINDS:
        name = provider(kind, getattr(flow, kind)).name
        forced = overrides.get(kind)
        if forced:
            flow = with_provider(flow, kind, forced)
            lines.append(f"{kind}: {forced} (--{kind})")
            continue
        missing = [k for k in PROVIDERS[(kind, name)].keys if not env.get(k)]
        if keyless and (missing or (kind == "stt" and name == "local")):
            why = f"no {', '.join(missing)}" if missing else "the script player ignores a voice"
            flow = with_provider(flow, kind, KEYLESS[kind])
            lines.append(f"{kind}: {KEYLESS[kind]} (the flow's {name}: {why})")
        else:
            lines.append(f"{kind}: {name} (the flow's)")
    return flow, lines
